"""What every part shares: domain types, the envelope, errors, config, deadlines and events."""
