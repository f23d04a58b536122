"""What a running proxy serves from: the snapshot compiled from the validated config."""
