// Command holdfast runs and operates replicated PostgreSQL clusters: the
// agent beside each member, a local cluster in one command, and the
// operator's CLI. See the README.
package main

import (
	"os"

	"github.com/holdfast/holdfast/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
