package config

import "time"

// Duration is a time.Duration written in YAML as "10s", "500ms", "1m".
type Duration time.Duration

// ByteSize is a size written as a number of bytes or with a unit:
// "16MB", "1MiB", "512kB" (PostgreSQL-style units are binary: 1kB = 1024).
type ByteSize int64
