"""Process lifecycle: the supervisor, its workers, the channel between them, the pid file, cutovers."""
