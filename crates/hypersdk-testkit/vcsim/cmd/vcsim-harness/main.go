// Command vcsim-harness runs govmomi's vcsim (Debian's 0.24.2 sources) with
// the hypersdk extensions compiled into package simulator (see
// ../../overlay/simulator and ../../README.md).
//
// It listens on one loopback port (TLS with a fresh P-256 certificate unless
// -tls=false), prints one JSON line on stdout describing the server, and runs
// until SIGINT/SIGTERM, or until stdin reaches EOF with -exit-on-stdin-eof
// (so it dies with its parent). Logs go to stderr.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

// startup is the JSON line printed once the server accepts connections.
type startup struct {
	URL              string `json:"url"`
	BaseURL          string `json:"base_url"`
	ControlURL       string `json:"control_url"`
	Username         string `json:"username"`
	Password         string `json:"password"`
	TLS              bool   `json:"tls"`
	CAPEM            string `json:"ca_pem,omitempty"`
	CertPEM          string `json:"cert_pem,omitempty"`
	ThumbprintSHA1   string `json:"thumbprint_sha1,omitempty"`
	ThumbprintSHA256 string `json:"thumbprint_sha256,omitempty"`
	APIType          string `json:"api_type"`
	PID              int    `json:"pid"`
	Workdir          string `json:"workdir"`
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

// certificates makes a CA and a P-256 leaf for 127.0.0.1/localhost signed by
// it. rustls rejects vcsim's built-in RSA-1024 CA:TRUE certificate, so the
// harness never uses it.
func certificates() (leaf tls.Certificate, caPEM, leafPEM string, err error) {
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hypersdk vcsim test CA"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return
	}
	leaf = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	leafPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return
}

func main() {
	var (
		listen       = flag.String("listen", "127.0.0.1:0", "address of the public server")
		useTLS       = flag.Bool("tls", true, "serve HTTPS with a generated certificate")
		username     = flag.String("username", "user", "the only user name Login accepts")
		password     = flag.String("password", "pass", "the only password Login accepts")
		esx          = flag.Bool("esx", false, "simulate a standalone ESXi host instead of vCenter")
		dc           = flag.Int("dc", -1, "datacenters (-1: model default)")
		cluster      = flag.Int("cluster", -1, "clusters per datacenter")
		clusterHost  = flag.Int("host", -1, "hosts per cluster")
		standalone   = flag.Int("standalone-host", -1, "standalone hosts per datacenter")
		vms          = flag.Int("vm", -1, "VMs per resource pool (each standalone host and each cluster has one root pool)")
		pool         = flag.Int("pool", -1, "child resource pools per cluster")
		ds           = flag.Int("ds", -1, "datastores")
		folder       = flag.Int("folder", -1, "folders per datacenter")
		pg           = flag.Int("pg", -1, "distributed portgroups per datacenter")
		autostart    = flag.Bool("autostart", true, "power on the model's VMs")
		idle         = flag.Duration("session-idle-timeout", 0, "expire sessions idle this long (0: never)")
		leaseTimeout = flag.Int("lease-timeout", 300, "leaseTimeout (seconds) of NFC leases, enforced: no HttpNfcLeaseProgress for that long fails the lease (0: not enforced)")
		trace        = flag.Bool("trace", false, "dump SOAP traffic to stderr")
		workdir      = flag.String("workdir", "", "directory for the datastores (default $TMPDIR); removed on exit")
		stdinEOF     = flag.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF")
	)
	flag.Parse()
	log.SetPrefix("vcsim-harness: ")

	if *workdir != "" {
		if err := os.MkdirAll(*workdir, 0o700); err != nil {
			log.Fatal(err)
		}
		// vcsim makes its datastore directories with ioutil.TempDir("", ...).
		_ = os.Setenv("TMPDIR", *workdir)
	}

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	}
	set := func(dst *int, v int) {
		if v >= 0 {
			*dst = v
		}
	}
	set(&model.Datacenter, *dc)
	set(&model.Cluster, *cluster)
	set(&model.ClusterHost, *clusterHost)
	set(&model.Host, *standalone)
	set(&model.Machine, *vms)
	set(&model.Pool, *pool)
	set(&model.Datastore, *ds)
	set(&model.Folder, *folder)
	set(&model.Portgroup, *pg)
	model.Autostart = *autostart
	simulator.SessionIdleTimeout = *idle
	simulator.Trace = *trace

	start := time.Now()
	if err := model.Create(); err != nil {
		log.Fatalf("creating model: %s", err)
	}
	cleanup := func() {
		model.Remove()
		if *workdir != "" {
			_ = os.RemoveAll(*workdir)
		}
	}
	simulator.InstallPaging()

	// NewServer registers vcsim's handlers on model.Service.ServeMux and
	// starts a plain listener of its own, which is closed at once: the
	// public server below serves the same mux through the harness.
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*username, *password)}
	inner := model.Service.NewServer()
	inner.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		cleanup()
		log.Fatalf("listen %s: %s", *listen, err)
	}
	scheme := "http"
	if *useTLS {
		scheme = "https"
	}
	base := &url.URL{Scheme: scheme, Host: ln.Addr().String()}
	info := startup{
		URL:        base.String() + "/sdk",
		BaseURL:    base.String(),
		ControlURL: base.String() + "/_hypersdk",
		Username:   *username,
		Password:   *password,
		TLS:        *useTLS,
		APIType:    "VirtualCenter",
		PID:        os.Getpid(),
		Workdir:    *workdir,
	}
	if *esx {
		info.APIType = "HostAgent"
	}

	cfg := simulator.HarnessConfig{Scheme: scheme, LeaseTimeout: int32(*leaseTimeout)}
	certB64 := ""
	if *useTLS {
		leaf, caPEM, leafPEM, err := certificates()
		if err != nil {
			cleanup()
			log.Fatalf("certificates: %s", err)
		}
		s1 := sha1.Sum(leaf.Certificate[0])
		s256 := sha256.Sum256(leaf.Certificate[0])
		info.CAPEM, info.CertPEM = caPEM, leafPEM
		info.ThumbprintSHA1, info.ThumbprintSHA256 = colonHex(s1[:]), colonHex(s256[:])
		cfg.SSLThumbprint = info.ThumbprintSHA1
		certB64 = base64.StdEncoding.EncodeToString(leaf.Certificate[0])
		ln = tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{leaf},
			MinVersion:   tls.VersionTLS12,
			ClientAuth:   tls.RequestClientCert, // as vcsim: LoginExtensionByCertificate
			NextProtos:   []string{"http/1.1"},
		})
	}
	simulator.SetPublicURL(&url.URL{Scheme: scheme, Host: base.Host, Path: "/sdk"}, certB64)

	srv := &http.Server{
		Handler:           simulator.NewHarness(model.Service, cfg),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(os.Stderr, "vcsim-harness http: ", log.LstdFlags),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Printf("serve: %s", err)
		}
	}()

	line, _ := json.Marshal(info)
	fmt.Println(string(line))
	log.Printf("ready in %s: %s (model: dc=%d clusters=%d hosts/cluster=%d standalone=%d vms/pool=%d ds=%d)",
		time.Since(start).Round(time.Millisecond), info.URL, model.Datacenter, model.Cluster,
		model.ClusterHost, model.Host, model.Machine, model.Datastore)

	done := make(chan string, 2)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { done <- (<-sig).String() }()
	if *stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			done <- "stdin EOF"
		}()
	}
	reason := <-done
	log.Printf("stopping (%s)", reason)
	_ = srv.Close()
	cleanup()
}
