// Stand-in for the MinIO image (quay.io/minio/minio) where no registry answers. MinIO itself cannot be
// built here (AGPL, and the Go module proxy does not serve it), so this image runs versitygw, an
// Apache-2.0 S3 server storing objects as files under /data with SigV4 authentication, behind the two
// command lines the edgetune chart uses:
//
//	minio server DIR --address :9000 [--console-address ...]     (MINIO_ROOT_USER / MINIO_ROOT_PASSWORD)
//	mc alias set NAME URL ACCESS_KEY SECRET_KEY
//	mc mb --ignore-existing NAME/BUCKET
//
// `minio server` starts versitygw on a private port and answers MinIO's health paths
// (/minio/health/live, /minio/health/ready) itself, forwarding every other request unchanged (the Host
// header too, which SigV4 signs). One binary: it acts by the name it is called with.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

const backendAddress = "127.0.0.1:9100"

func main() {
	var err error
	switch filepath.Base(os.Args[0]) {
	case "mc":
		err = mc(os.Args[1:])
	default:
		err = minio(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", filepath.Base(os.Args[0]), err)
		os.Exit(1)
	}
}

func minio(args []string) error {
	if len(args) < 2 || args[0] != "server" {
		return errors.New("usage: minio server DIR [--address :9000] [--console-address ADDR]")
	}
	dir, address := args[1], ":9000"
	for i := 2; i < len(args); i++ {
		if args[i] == "--address" && i+1 < len(args) {
			address = args[i+1]
			i++
		} else if args[i] == "--console-address" {
			i++ // no console here
		}
	}
	user, password := os.Getenv("MINIO_ROOT_USER"), os.Getenv("MINIO_ROOT_PASSWORD")
	if user == "" || password == "" {
		return errors.New("MINIO_ROOT_USER and MINIO_ROOT_PASSWORD must be set")
	}
	backend := exec.Command("versitygw", "--port", backendAddress, "posix", dir)
	backend.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+user, "ROOT_SECRET_ACCESS_KEY="+password)
	backend.Stdout, backend.Stderr = os.Stdout, os.Stderr
	if err := backend.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- backend.Wait() }()

	target := &url.URL{Scheme: "http", Host: backendAddress}
	proxy := httputil.NewSingleHostReverseProxy(target)
	mux := http.NewServeMux()
	mux.HandleFunc("/minio/health/live", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/minio/health/ready", func(w http.ResponseWriter, _ *http.Request) {
		conn, err := net.DialTimeout("tcp", backendAddress, time.Second)
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		conn.Close()
		w.WriteHeader(http.StatusOK)
	})
	mux.Handle("/", proxy)
	server := &http.Server{Addr: address, Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	served := make(chan error, 1)
	go func() { served <- server.ListenAndServe() }()
	fmt.Printf("minio stand-in: S3 on %s (versitygw posix %s)\n", address, dir)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-stop:
		_ = backend.Process.Signal(sig)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
		<-exited
		return nil
	case err := <-exited:
		return fmt.Errorf("versitygw exited: %v", err)
	case err := <-served:
		_ = backend.Process.Kill()
		return err
	}
}

// alias is what `mc alias set` remembers, in $MC_CONFIG_DIR/aliases.json.
type alias struct {
	URL       string `json:"url"`
	AccessKey string `json:"accessKey"`
	SecretKey string `json:"secretKey"`
}

func aliasFile() string {
	dir := os.Getenv("MC_CONFIG_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".mc")
	}
	return filepath.Join(dir, "aliases.json")
}

func loadAliases() map[string]alias {
	aliases := map[string]alias{}
	if data, err := os.ReadFile(aliasFile()); err == nil {
		_ = json.Unmarshal(data, &aliases)
	}
	return aliases
}

func mc(args []string) error {
	switch {
	case len(args) == 6 && args[0] == "alias" && args[1] == "set":
		aliases := loadAliases()
		aliases[args[2]] = alias{URL: args[3], AccessKey: args[4], SecretKey: args[5]}
		data, _ := json.Marshal(aliases)
		if err := os.MkdirAll(filepath.Dir(aliasFile()), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(aliasFile(), data, 0o600); err != nil {
			return err
		}
		fmt.Printf("Added `%s` successfully.\n", args[2])
		return nil
	case len(args) >= 2 && args[0] == "mb":
		ignoreExisting := false
		var target string
		for _, arg := range args[1:] {
			if arg == "--ignore-existing" || arg == "-p" {
				ignoreExisting = true
			} else {
				target = arg
			}
		}
		name, bucket, ok := strings.Cut(target, "/")
		entry, known := loadAliases()[name]
		if !ok || !known || bucket == "" {
			return fmt.Errorf("mb: %q is not ALIAS/BUCKET of a known alias", target)
		}
		return makeBucket(entry, bucket, ignoreExisting)
	}
	return errors.New("usage: mc alias set NAME URL ACCESS_KEY SECRET_KEY | mc mb [--ignore-existing] NAME/BUCKET")
}

func makeBucket(entry alias, bucket string, ignoreExisting bool) error {
	client := s3.New(s3.Options{
		BaseEndpoint: aws.String(entry.URL),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(entry.AccessKey, entry.SecretKey, ""),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err != nil && ignoreExisting && (errors.As(err, &owned) || errors.As(err, &exists)) {
		err = nil
	}
	if err != nil {
		return err
	}
	fmt.Printf("Bucket created successfully `%s`.\n", bucket)
	return nil
}
