// Command kubesmoke is the tiny program in the image the Kubernetes test
// cluster's smoke test runs (internal/testutil/kubeenv). As a server
// (no arguments, or "serve") it listens on :8080 and records each start in
// /data/boots; as a client, run with `kubectl exec`, it resolves names and
// fetches URLs from inside a pod:
//
//	kubesmoke [serve]         serve HTTP on $KUBESMOKE_LISTEN (default :8080)
//	kubesmoke resolve NAME    print the addresses NAME resolves to, one a line
//	kubesmoke get URL         print the body of an HTTP GET (3 s timeout)
//	kubesmoke cat FILE        print a file
//	kubesmoke dial HOST:PORT  open a TCP connection (3 s timeout)
//
// Server endpoints: /healthz, /whoami (the pod name), /boots (/data/boots),
// /resolve?name=NAME, /get?url=URL.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const bootsFile = "/data/boots"

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		args = []string{"serve"}
	}
	var err error
	switch {
	case args[0] == "serve":
		err = serve()
	case args[0] == "resolve" && len(args) == 2:
		var addrs []string
		if addrs, err = resolve(args[1]); err == nil {
			fmt.Println(strings.Join(addrs, "\n"))
		}
	case args[0] == "get" && len(args) == 2:
		var body string
		if body, err = get(args[1]); err == nil {
			fmt.Print(body)
		}
	case args[0] == "dial" && len(args) == 2:
		var conn net.Conn
		if conn, err = net.DialTimeout("tcp", args[1], 3*time.Second); err == nil {
			fmt.Println("connected", conn.RemoteAddr())
			conn.Close()
		}
	case args[0] == "cat" && len(args) == 2:
		var b []byte
		if b, err = os.ReadFile(args[1]); err == nil {
			_, err = os.Stdout.Write(b)
		}
	default:
		err = fmt.Errorf("usage: kubesmoke [serve | resolve NAME | get URL | dial HOST:PORT | cat FILE]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubesmoke:", err)
		os.Exit(1)
	}
}

func podName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}

func resolve(name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return net.DefaultResolver.LookupHost(ctx, name)
}

func get(url string) (string, error) {
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), nil
}

func serve() error {
	if _, err := os.Stat("/data"); err == nil {
		f, err := os.OpenFile(bootsFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		fmt.Fprintf(f, "%s %s\n", podName(), time.Now().UTC().Format(time.RFC3339Nano))
		if err := f.Close(); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, podName()) })
	mux.HandleFunc("/boots", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(bootsFile)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := resolve(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, strings.Join(addrs, "\n"))
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		body, err := get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprint(w, body)
	})
	addr := os.Getenv("KUBESMOKE_LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	fmt.Printf("kubesmoke listening pod=%s addr=%s\n", podName(), addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}
