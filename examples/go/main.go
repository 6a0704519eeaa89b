// Command llmc-go-client is a Go client of llmcompress built from protos/ alone
// (Debian's grpc-go 1.33): Compress, Reconstruct with a byte check, and a
// two-way streamed BatchCompress with one deliberately bad item. It prints one
// JSON line per check.
//
//	llmc-go-client [-token T] [-mode zstd] [-items 120] [-timeout 30] [-text-file F] HOST:PORT
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "llmcompress/v1"
)

// unknownMode is not a Mode of the contract: the server answers that item alone
// with INVALID_ARGUMENT.
const unknownMode = pb.Mode(99)

type caller struct {
	client  pb.CompressionServiceClient
	token   string
	timeout time.Duration
}

// ctx gives every call a deadline, and the token when there is one.
func (c *caller) ctx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx, cancel
}

func emit(line map[string]any) {
	out, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
}

func emitError(check string, err error) {
	st := status.Convert(err)
	emit(map[string]any{"check": check, "ok": false, "code": int(st.Code()), "message": st.Message()})
}

// roundTrips reports whether the envelope reconstructs to text byte for byte.
func (c *caller) roundTrips(envelope []byte, text string) (*pb.ReconstructResponse, bool, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	back, err := c.client.Reconstruct(ctx, &pb.ReconstructRequest{Envelope: envelope})
	if err != nil {
		return nil, false, err
	}
	return back, back.GetText() == text, nil
}

func (c *caller) compressAndReconstruct(text string, mode pb.Mode) bool {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.client.Compress(ctx, &pb.CompressRequest{Text: text, Mode: mode})
	if err != nil {
		emitError("compress", err)
		return false
	}
	s := resp.GetStats()
	emit(map[string]any{
		"check": "compress", "ok": true, "mode": s.GetMode().String(),
		"original_bytes": s.GetOriginalBytes(), "compressed_bytes": s.GetCompressedBytes(),
		"envelope_bytes": len(resp.GetEnvelope()), "ratio": s.GetRatio(),
	})
	back, same, err := c.roundTrips(resp.GetEnvelope(), text)
	if err != nil {
		emitError("reconstruct", err)
		return false
	}
	emit(map[string]any{
		"check": "reconstruct", "ok": same && back.GetExact(), "bytes_equal": same,
		"exact": back.GetExact(), "mode": back.GetMode().String(), "bytes": len(back.GetText()),
	})
	return same && back.GetExact()
}

func (c *caller) batch(items int, mode pb.Mode) bool {
	bad := items / 2 // in the middle, so later items show the stream goes on
	ids := make([]string, items)
	texts := make([]string, items)
	indexOf := make(map[string]int, items)
	for i := range ids {
		ids[i] = fmt.Sprintf("go-%d", i)
		texts[i] = fmt.Sprintf("item %d: %s", i, strings.Repeat("the quick brown fox jumps over the lazy dog ", 1+i%7))
		indexOf[ids[i]] = i
	}

	ctx, cancel := c.ctx()
	defer cancel()
	stream, err := c.client.BatchCompress(ctx)
	if err != nil {
		emitError("batch", err)
		return false
	}
	// Send from a goroutine while this one receives: both directions stream at once.
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for i := range ids {
			m := mode
			if i == bad {
				m = unknownMode
			}
			if stream.Send(&pb.BatchCompressRequest{Id: ids[i], Request: &pb.CompressRequest{Text: texts[i], Mode: m}}) != nil {
				return // the stream broke; Recv reports why
			}
			n++
		}
		_ = stream.CloseSend()
	}()

	seen := map[string]int{}
	envelopes := map[string][]byte{}
	answers, errs, duplicates, unknown, answeredAfterBad := 0, 0, 0, 0, 0
	badCode, badMessage := -1, ""
	for {
		answer, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			<-sent
			emitError("batch", err)
			return false
		}
		answers++
		seen[answer.GetId()]++
		if seen[answer.GetId()] > 1 {
			duplicates++
		}
		index, known := indexOf[answer.GetId()]
		if !known {
			unknown++
		}
		if known && index > bad {
			answeredAfterBad++
		}
		if e := answer.GetError(); e != nil {
			errs++
			// The per-item google.rpc.Status is the type grpc-go's own statuses use.
			if st := status.FromProto(e); known && index == bad {
				badCode, badMessage = int(st.Code()), st.Message()
			}
		} else {
			envelopes[answer.GetId()] = answer.GetResult().GetEnvelope()
		}
	}
	written := <-sent

	// Every result must reconstruct to its own text.
	exact := 0
	for i, id := range ids {
		if env, ok := envelopes[id]; ok {
			if back, same, err := c.roundTrips(env, texts[i]); err == nil && same && back.GetExact() {
				exact++
			}
		}
	}
	missing := 0
	for _, id := range ids {
		if seen[id] == 0 {
			missing++
		}
	}
	ok := missing == 0 && duplicates == 0 && unknown == 0 && errs == 1 &&
		badCode == int(codes.InvalidArgument) && answeredAfterBad == items-bad-1 && exact == len(envelopes)
	emit(map[string]any{
		"check": "batch", "ok": ok, "sent": written, "answers": answers, "unique_ids": len(seen),
		"missing": missing, "duplicates": duplicates, "unknown_ids": unknown,
		"results": len(envelopes), "results_exact": exact, "errors": errs,
		"bad_id": ids[bad], "bad_code": badCode, "bad_message": badMessage,
		"answered_after_bad": answeredAfterBad,
	})
	return ok
}

func main() {
	token := flag.String("token", os.Getenv("LLMC_TOKEN"), "bearer token (default $LLMC_TOKEN)")
	modeName := flag.String("mode", "zstd", "zstd, lossless, semantic or unspecified")
	items := flag.Int("items", 120, "BatchCompress items (one of them deliberately bad)")
	timeout := flag.Float64("timeout", 30, "deadline of every call, seconds")
	textFile := flag.String("text-file", "", "text to Compress (default: a built-in UTF-8 sample)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: llmc-go-client [flags] HOST:PORT")
		flag.PrintDefaults()
	}
	flag.Parse()
	fail := func(why string) {
		fmt.Fprintln(os.Stderr, "llmc-go-client:", why)
		flag.Usage()
		os.Exit(2)
	}
	if flag.NArg() != 1 {
		fail("give the server address, one only")
	}
	mode, known := pb.Mode_value["MODE_"+strings.ToUpper(*modeName)]
	if !known {
		fail("unknown mode " + *modeName)
	}
	if *items < 2 {
		fail("-items must be at least 2")
	}
	if *timeout <= 0 {
		fail("-timeout must be above 0 seconds")
	}
	text := strings.Repeat("Go says hello to llmcompress — naïve café 東京\n", 20)
	if *textFile != "" {
		raw, err := os.ReadFile(*textFile)
		if err != nil {
			fail(err.Error())
		}
		text = string(raw)
	}

	conn, err := grpc.Dial(flag.Arg(0), grpc.WithInsecure())
	if err != nil {
		fail(err.Error())
	}
	defer conn.Close()
	c := &caller{client: pb.NewCompressionServiceClient(conn), token: *token, timeout: time.Duration(*timeout * float64(time.Second))}
	// An auth or connection failure ends the run at the first call: its status is the answer.
	if !c.compressAndReconstruct(text, pb.Mode(mode)) || !c.batch(*items, pb.Mode(mode)) {
		os.Exit(1)
	}
}
