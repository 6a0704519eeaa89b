// A C++ client of llmcompress built from protos/ alone (Debian's grpc++ 1.51):
// Compress, Reconstruct with a byte check, and a two-way streamed BatchCompress
// with one deliberately bad item. Prints one JSON line per check.
//
//   llmc-cpp-client [--token T] [--mode zstd] [--items 120] [--timeout 30]
//                   [--text-file F] HOST:PORT
#include <grpcpp/grpcpp.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "llmcompress/v1/compression.grpc.pb.h"

namespace pb = llmcompress::v1;

namespace {

// Not a Mode of the contract: the server answers this item alone with INVALID_ARGUMENT.
constexpr int kUnknownMode = 99;

struct Options {
  std::string address;
  std::string token;  // empty: no authorization metadata
  pb::Mode mode = pb::MODE_ZSTD;
  int items = 120;
  double timeout_seconds = 30;
  std::string text;
};

std::string Json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);  // UTF-8 passes through as is
        }
    }
  }
  return out + "\"";
}

[[noreturn]] void Usage(const std::string& why) {
  std::cerr << "llmc-cpp-client: " << why
            << "\nusage: llmc-cpp-client [--token T] [--mode zstd|lossless|semantic|unspecified]"
               " [--items N] [--timeout SECONDS] [--text-file FILE] HOST:PORT\n"
               "The token defaults to $LLMC_TOKEN.\n";
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options opt;
  if (const char* env = std::getenv("LLMC_TOKEN")) opt.token = env;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--token") {
      opt.token = value();
    } else if (arg == "--mode") {
      std::string name = "MODE_" + value();
      for (auto& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      if (!pb::Mode_Parse(name, &opt.mode)) Usage("unknown mode " + name);
    } else if (arg == "--items") {
      opt.items = std::atoi(value().c_str());
      if (opt.items < 2) Usage("--items must be at least 2");
    } else if (arg == "--timeout") {
      opt.timeout_seconds = std::atof(value().c_str());
      if (!(opt.timeout_seconds > 0)) Usage("--timeout must be above 0 seconds");
    } else if (arg == "--text-file") {
      std::ifstream in(value(), std::ios::binary);
      if (!in) Usage("cannot read the text file");
      std::stringstream buf;
      buf << in.rdbuf();
      opt.text = buf.str();
    } else if (!arg.empty() && arg[0] == '-') {
      Usage("unknown option " + arg);
    } else if (opt.address.empty()) {
      opt.address = arg;
    } else {
      Usage("one server address only");
    }
  }
  if (opt.address.empty()) Usage("the server address is missing");
  if (opt.text.empty()) {
    for (int i = 0; i < 20; ++i) opt.text += "C++ says hello to llmcompress \xe2\x80\x94 na\xc3\xafve caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac\n";
  }
  return opt;
}

class Caller {
 public:
  explicit Caller(const Options& opt)
      : opt_(opt),
        stub_(pb::CompressionService::NewStub(
            grpc::CreateChannel(opt.address, grpc::InsecureChannelCredentials()))) {}

  // Every call gets a deadline, and the token when there is one.
  void Prepare(grpc::ClientContext* ctx) const {
    auto timeout = std::chrono::duration<double>(opt_.timeout_seconds);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::microseconds>(timeout));
    if (!opt_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + opt_.token);
  }

  pb::CompressionService::Stub& stub() { return *stub_; }

 private:
  const Options& opt_;
  std::unique_ptr<pb::CompressionService::Stub> stub_;
};

void PrintError(const std::string& check, const grpc::Status& status) {
  std::cout << "{\"check\":" << Json(check) << ",\"ok\":false,\"code\":" << status.error_code()
            << ",\"message\":" << Json(status.error_message()) << "}" << std::endl;
}

// Reconstruct one envelope; true when the server's text is `text` byte for byte.
bool RoundTrips(Caller& caller, const std::string& envelope, const std::string& text,
                pb::ReconstructResponse* back, grpc::Status* status) {
  grpc::ClientContext ctx;
  caller.Prepare(&ctx);
  pb::ReconstructRequest req;
  req.set_envelope(envelope);
  *status = caller.stub().Reconstruct(&ctx, req, back);
  return status->ok() && back->text() == text;
}

bool CompressAndReconstruct(Caller& caller, const Options& opt) {
  pb::CompressRequest req;
  req.set_text(opt.text);
  req.set_mode(opt.mode);
  pb::CompressResponse resp;
  grpc::ClientContext ctx;
  caller.Prepare(&ctx);
  grpc::Status status = caller.stub().Compress(&ctx, req, &resp);
  if (!status.ok()) {
    PrintError("compress", status);
    return false;
  }
  const pb::Stats& s = resp.stats();
  std::cout << "{\"check\":\"compress\",\"ok\":true,\"mode\":" << Json(pb::Mode_Name(s.mode()))
            << ",\"original_bytes\":" << s.original_bytes()
            << ",\"compressed_bytes\":" << s.compressed_bytes()
            << ",\"envelope_bytes\":" << resp.envelope().size() << ",\"ratio\":" << s.ratio()
            << "}" << std::endl;

  pb::ReconstructResponse back;
  bool same = RoundTrips(caller, resp.envelope(), opt.text, &back, &status);
  if (!status.ok()) {
    PrintError("reconstruct", status);
    return false;
  }
  std::cout << "{\"check\":\"reconstruct\",\"ok\":" << (same && back.exact() ? "true" : "false")
            << ",\"bytes_equal\":" << (same ? "true" : "false")
            << ",\"exact\":" << (back.exact() ? "true" : "false")
            << ",\"mode\":" << Json(pb::Mode_Name(back.mode())) << ",\"bytes\":" << back.text().size()
            << "}" << std::endl;
  return same && back.exact();
}

bool Batch(Caller& caller, const Options& opt) {
  const int bad = opt.items / 2;  // in the middle, so later items show the stream goes on
  std::vector<std::string> ids, texts;
  std::map<std::string, int> index_of;
  for (int i = 0; i < opt.items; ++i) {
    ids.push_back("cpp-" + std::to_string(i));
    index_of[ids.back()] = i;
    std::string text = "item " + std::to_string(i) + ": ";
    for (int r = 0; r <= i % 7; ++r) text += "the quick brown fox jumps over the lazy dog ";
    texts.push_back(text);
  }

  grpc::ClientContext ctx;
  caller.Prepare(&ctx);
  auto stream = caller.stub().BatchCompress(&ctx);
  // One writer thread and this reader: the sync API allows one of each at a time.
  int written = 0;
  bool writes_ok = true;
  std::thread writer([&] {
    for (int i = 0; i < opt.items; ++i) {
      pb::BatchCompressRequest item;
      item.set_id(ids[i]);
      item.mutable_request()->set_text(texts[i]);
      item.mutable_request()->set_mode(i == bad ? static_cast<pb::Mode>(kUnknownMode) : opt.mode);
      if (!stream->Write(item)) {
        writes_ok = false;  // the stream broke; Finish() says why
        return;
      }
      written = i + 1;
    }
    stream->WritesDone();
  });

  std::map<std::string, int> seen;
  std::map<std::string, std::string> envelopes;
  int answers = 0, errors = 0, duplicates = 0, unknown = 0, answered_after_bad = 0;
  std::string bad_message;
  int bad_code = -1;
  pb::BatchCompressResponse answer;
  while (stream->Read(&answer)) {
    ++answers;
    if (++seen[answer.id()] > 1) ++duplicates;
    auto found = index_of.find(answer.id());
    int index = found == index_of.end() ? -1 : found->second;
    if (index < 0) ++unknown;
    if (index > bad) ++answered_after_bad;
    if (answer.has_error()) {
      ++errors;
      if (index == bad) {
        bad_code = answer.error().code();
        bad_message = answer.error().message();
      }
    } else {
      envelopes[answer.id()] = answer.result().envelope();
    }
  }
  writer.join();
  grpc::Status status = stream->Finish();
  if (!status.ok() || !writes_ok) {
    PrintError("batch", status.ok() ? grpc::Status(grpc::StatusCode::UNKNOWN, "write failed") : status);
    return false;
  }

  // Every result must reconstruct to its own text.
  int exact = 0;
  for (int i = 0; i < opt.items; ++i) {
    auto it = envelopes.find(ids[i]);
    if (it == envelopes.end()) continue;
    pb::ReconstructResponse back;
    if (RoundTrips(caller, it->second, texts[i], &back, &status) && back.exact()) ++exact;
  }
  int missing = 0;
  for (const auto& id : ids)
    if (seen.find(id) == seen.end()) ++missing;
  bool ok = missing == 0 && duplicates == 0 && unknown == 0 && errors == 1 &&
            bad_code == static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT) &&
            answered_after_bad == opt.items - bad - 1 &&
            exact == static_cast<int>(envelopes.size());
  std::cout << "{\"check\":\"batch\",\"ok\":" << (ok ? "true" : "false") << ",\"sent\":" << written
            << ",\"answers\":" << answers
            << ",\"unique_ids\":" << seen.size() << ",\"missing\":" << missing
            << ",\"duplicates\":" << duplicates << ",\"unknown_ids\":" << unknown
            << ",\"results\":" << envelopes.size() << ",\"results_exact\":" << exact
            << ",\"errors\":" << errors << ",\"bad_id\":" << Json(ids[bad])
            << ",\"bad_code\":" << bad_code << ",\"bad_message\":" << Json(bad_message)
            << ",\"answered_after_bad\":" << answered_after_bad << "}" << std::endl;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = Parse(argc, argv);
  Caller caller(opt);
  // An auth or connection failure ends the run at the first call: its status is the answer.
  if (!CompressAndReconstruct(caller, opt)) return 1;
  return Batch(caller, opt) ? 0 : 1;
}
