// hypersdk vcsim harness: the public HTTP handler, NFC transfers, fault
// injection and the control API under /_hypersdk/.
//
// Copied into github.com/vmware/govmomi/simulator at build time (see
// ../../build.sh and ../../README.md for the API).

package simulator

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	vimxml "github.com/vmware/govmomi/vim25/xml"
)

// HarnessConfig is what the harness needs to know about the public server.
type HarnessConfig struct {
	// Scheme of the public server ("https" or "http"), used in ExportVm device URLs.
	Scheme string
	// SSLThumbprint is the SHA-1 thumbprint (colon hex) of the server
	// certificate, put in ExportVm deviceUrl.sslThumbprint. Empty without TLS.
	SSLThumbprint string
	// LeaseTimeout is HttpNfcLeaseInfo.leaseTimeout (seconds) of every NFC
	// lease, enforced: a ready lease without HttpNfcLeaseProgress for this
	// long goes to state error with a Timedout fault (hypersdk_leases.go).
	// 0 disables the enforcement.
	LeaseTimeout int32
}

// MethodRule fails (or delays) calls of one SOAP method.
type MethodRule struct {
	// Method is the SOAP method name as sent on the wire, e.g. "RetrievePropertiesEx".
	Method string `json:"method"`
	// Count is how many calls the rule acts on (default 1).
	Count int `json:"count"`
	// After lets this many matching calls through before the rule acts.
	After int `json:"after"`
	// Fault is a vim25 fault type name ("NotAuthenticated", "SystemError", ...).
	Fault string `json:"fault,omitempty"`
	// Message is the faultstring.
	Message string `json:"message,omitempty"`
	// HTTPStatus answers with this HTTP status and no SOAP body instead of a fault.
	HTTPStatus int `json:"http_status,omitempty"`
	// DelayMs delays the call; alone, the call then proceeds normally.
	DelayMs int `json:"delay_ms,omitempty"`
}

// CutRule drops the connection of matching HTTP transfers after a number of
// body bytes (request body for uploads, response body for downloads).
type CutRule struct {
	// Prefix of the URL path (default "/nfc/"; "/folder/" works too).
	Prefix string `json:"prefix"`
	// HTTPMethod restricts the rule to one HTTP method ("GET", "PUT", "POST"); empty = any.
	HTTPMethod string `json:"http_method,omitempty"`
	// AfterBytes is how many body bytes pass before the connection is dropped.
	AfterBytes int64 `json:"after_bytes"`
	// Count is how many transfers are cut (default 1).
	Count int `json:"count"`
	// After lets this many matching transfers through before the rule acts.
	After int `json:"after,omitempty"`
	// HoldMs, when set, holds the transfer this long once AfterBytes have
	// passed (the server neither reads nor writes: the peer sees a stalled
	// transfer) before dropping the connection. The transfer never
	// completes, and nothing after AfterBytes is stored, even if the peer
	// went away during the hold.
	HoldMs int `json:"hold_ms,omitempty"`
}

// LeaseRule changes the next ExportVm/ExportSnapshot leases: they start in
// state "initializing" and, after InitializeMs, become "ready" or, with
// Fault, go to "error".
type LeaseRule struct {
	Count        int    `json:"count"`
	InitializeMs int    `json:"initialize_ms"`
	Fault        string `json:"fault,omitempty"`
	Message      string `json:"message,omitempty"`
}

// Upload records one NFC upload (PUT/POST to an import lease URL).
type Upload struct {
	Lease       string `json:"lease"`
	VM          string `json:"vm"`
	VMName      string `json:"vm_name"`
	Name        string `json:"name"`
	Path        string `json:"path"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	Complete    bool   `json:"complete"`
	HTTPMethod  string `json:"http_method"`
	ContentType string `json:"content_type"`
}

// Harness is the public HTTP handler.
type Harness struct {
	cfg HarnessConfig
	svc *Service

	mu      sync.Mutex
	method  []*MethodRule
	cut     []*CutRule
	lease   []*LeaseRule
	uploads []Upload
	calls   map[string]int
}

// harness is process-global, like vcsim's Map.
var harness = &Harness{
	cfg:   HarnessConfig{Scheme: "https", LeaseTimeout: 300},
	calls: make(map[string]int),
}

var startWatcher sync.Once

// NewHarness configures the global harness and returns it as the handler of
// the public server. s must have been started with NewServer (which
// registers vcsim's handlers on s.ServeMux). It also starts the lease
// timeout watcher.
func NewHarness(s *Service, cfg HarnessConfig) *Harness {
	harness.mu.Lock()
	harness.cfg = cfg
	harness.svc = s
	harness.mu.Unlock()
	SyncChangeTracking()
	startWatcher.Do(func() { go harness.watchLeases() })
	return harness
}

// SetPublicURL points vcsim's self-references at the public server.
func SetPublicURL(u *url.URL, certBase64 string) {
	Map.SessionManager().ServiceHostName = u.Host
	if certBase64 != "" {
		Map.SessionManager().TLSCert = func() string { return certBase64 }
	}
	m := Map.OptionManager()
	for i := range m.Setting {
		if o := m.Setting[i].GetOptionValue(); o.Key == "vcsim.server.url" {
			o.Value = u.String()
		}
	}
}

func (h *Harness) scheme() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg.Scheme
}

func (h *Harness) sslThumbprint() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg.SSLThumbprint
}

func (h *Harness) leaseTimeoutSeconds() int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg.LeaseTimeout
}

func (h *Harness) setLeaseTimeoutSeconds(n int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cfg.LeaseTimeout = n
}

func (h *Harness) takeLeaseRule() *LeaseRule {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.lease) == 0 {
		return nil
	}
	r := *h.lease[0]
	h.lease[0].Count--
	if h.lease[0].Count <= 0 {
		h.lease = h.lease[1:]
	}
	return &r
}

func (h *Harness) takeMethodRule(method string) *MethodRule {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls[method]++
	for i, r := range h.method {
		if r.Method != method {
			continue
		}
		if r.After > 0 {
			r.After--
			return nil
		}
		out := *r
		r.Count--
		if r.Count <= 0 {
			h.method = append(h.method[:i], h.method[i+1:]...)
		}
		return &out
	}
	return nil
}

func (h *Harness) takeCutRule(r *http.Request) *CutRule {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range h.cut {
		if !strings.HasPrefix(r.URL.Path, c.Prefix) {
			continue
		}
		if c.HTTPMethod != "" && !strings.EqualFold(c.HTTPMethod, r.Method) {
			continue
		}
		if c.After > 0 {
			c.After--
			continue
		}
		out := *c
		c.Count--
		if c.Count <= 0 {
			h.cut = append(h.cut[:i], h.cut[i+1:]...)
		}
		return &out
	}
	return nil
}

// ---------------------------------------------------------------------------
// Dispatch

const controlPrefix = "/_hypersdk/"

// ServeHTTP routes: /_hypersdk/ to the control API, /nfc/ to the harness's
// NFC handler, SOAP POSTs through fault injection to vcsim, and the rest
// (/folder, /about, vimServiceVersions.xml, ...) to vcsim unchanged.
func (h *Harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, controlPrefix) {
		h.serveControl(w, r)
		return
	}

	if rule := h.takeCutRule(r); rule != nil {
		hold := time.Duration(rule.HoldMs) * time.Millisecond
		cw := &cutWriter{ResponseWriter: w, left: rule.AfterBytes, hold: hold}
		cr := &cutReader{rc: r.Body, left: rule.AfterBytes, hold: hold}
		w = cw
		r.Body = cr
		log.Printf("hypersdk: cutting %s %s after %d bytes (held %s first)", r.Method, r.URL.Path, rule.AfterBytes, hold)
		defer func() {
			if cr.tripped {
				panic(http.ErrAbortHandler) // drop the connection, no response
			}
		}()
	}

	if strings.HasPrefix(r.URL.Path, nfcPrefix) {
		h.serveNFC(w, r)
		return
	}

	if r.Method == http.MethodPost && h.svc != nil && h.svc.sdk[r.URL.Path] != nil {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		name, args := soapCall(body)
		if rule := h.takeMethodRule(name); rule != nil {
			if rule.DelayMs > 0 {
				time.Sleep(time.Duration(rule.DelayMs) * time.Millisecond)
			}
			switch {
			case rule.Fault != "":
				f, err := newFault(rule.Fault)
				if err != nil {
					f = &types.SystemError{}
				}
				log.Printf("hypersdk: injected %s fault for %s", rule.Fault, name)
				writeSoapFault(w, Fault(rule.Message, f))
				return
			case rule.HTTPStatus != 0:
				log.Printf("hypersdk: injected HTTP %d for %s", rule.HTTPStatus, name)
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(rule.HTTPStatus)
				fmt.Fprintf(w, "hypersdk vcsim harness: injected HTTP %d for %s\n", rule.HTTPStatus, name)
				return
			}
		}
		switch name {
		case "HttpNfcLeaseProgress", "HttpNfcLeaseComplete":
			if err := h.leaseCall(name, args); err != nil {
				log.Printf("hypersdk: %s on a timed-out lease: %s", name, err)
				writeSoapFault(w, Fault(err.Error(), &types.Timedout{}))
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		h.svc.ServeMux.ServeHTTP(w, r)
		// Before the (buffered) answer leaves: start or stop change
		// tracking after a reconfiguration, give new leases their timeout.
		if strings.HasSuffix(name, "_Task") || name == "ImportVApp" {
			SyncChangeTracking()
		}
		switch name {
		case "ImportVApp", "ExportVm", "ExportSnapshot":
			h.scanLeases()
		}
		return
	}

	h.svc.ServeMux.ServeHTTP(w, r)
}

// soapCall returns the local name of the first element in the SOAP Body
// (the method) and the text of its simple child elements (the arguments,
// e.g. "_this" and "percent"; the first of repeated ones).
func soapCall(body []byte) (string, map[string]string) {
	d := xml.NewDecoder(bytes.NewReader(body))
	args := make(map[string]string)
	method := ""
	depth := 0 // 1 = inside the method element, 2 = inside an argument
	arg := ""
	var text strings.Builder
	for {
		tok, err := d.Token()
		if err != nil {
			return method, args
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch {
			case method == "" && depth == 0 && t.Name.Local == "Body":
				depth = -1
			case depth == -1:
				method = t.Name.Local
				depth = 1
			case depth >= 1:
				depth++
				if depth == 2 {
					arg = t.Name.Local
					text.Reset()
				}
			}
		case xml.CharData:
			if depth == 2 {
				text.Write(t)
			}
		case xml.EndElement:
			switch {
			case depth == 2:
				if _, ok := args[arg]; !ok {
					args[arg] = strings.TrimSpace(text.String())
				}
				depth = 1
			case depth > 2:
				depth--
			case depth == 1:
				return method, args
			}
		}
	}
}

func newFault(name string) (types.BaseMethodFault, error) {
	t, ok := types.TypeFunc()(name)
	if !ok {
		return nil, fmt.Errorf("unknown vim25 type %q", name)
	}
	f, ok := reflect.New(t).Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a MethodFault", name)
	}
	return f, nil
}

// writeSoapFault writes f exactly as vcsim's ServeSDK does.
func writeSoapFault(w http.ResponseWriter, f *soap.Fault) {
	var out bytes.Buffer
	fmt.Fprint(&out, vimxml.Header)
	e := vimxml.NewEncoder(&out)
	err := e.Encode(&soapEnvelope{
		Enc: "http://schemas.xmlsoap.org/soap/encoding/",
		Env: "http://schemas.xmlsoap.org/soap/envelope/",
		XSD: "http://www.w3.org/2001/XMLSchema",
		XSI: "http://www.w3.org/2001/XMLSchema-instance",
		Body: struct {
			Fault *soapFault
		}{
			&soapFault{
				Code:   f.Code,
				String: f.String,
				Detail: struct {
					Fault *faultDetail
				}{&faultDetail{f.Detail.Fault}},
			},
		},
	})
	if err == nil {
		err = e.Flush()
	}
	if err != nil {
		log.Printf("hypersdk: encoding fault: %s", err)
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write(out.Bytes())
}

// ---------------------------------------------------------------------------
// Cutting transfers

type cutWriter struct {
	http.ResponseWriter
	left int64
	hold time.Duration
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		c.left -= int64(len(p))
		return c.ResponseWriter.Write(p)
	}
	n, _ := c.ResponseWriter.Write(p[:c.left])
	c.left = 0
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	if c.hold > 0 {
		log.Printf("hypersdk: holding the response for %s before cutting it", c.hold)
		time.Sleep(c.hold)
	}
	log.Printf("hypersdk: response cut after %d more bytes", n)
	panic(http.ErrAbortHandler)
}

func (c *cutWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var errCut = errors.New("hypersdk: transfer cut by fault rule")

type cutReader struct {
	rc      io.ReadCloser
	left    int64
	hold    time.Duration
	tripped bool
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.tripped {
		return 0, errCut
	}
	if c.left <= 0 {
		// Cut only if there is more to read.
		var one [1]byte
		n, err := c.rc.Read(one[:])
		if n == 0 && err != nil {
			return 0, err
		}
		if c.hold > 0 {
			log.Printf("hypersdk: holding the upload for %s before cutting it", c.hold)
			time.Sleep(c.hold)
		}
		c.tripped = true
		return 0, errCut
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.rc.Read(p)
	c.left -= int64(n)
	return n, err
}

func (c *cutReader) Close() error { return c.rc.Close() }

// ---------------------------------------------------------------------------
// NFC

// serveNFC replaces vcsim's ServeNFC: GET/HEAD serve the lease's file with
// Range support; PUT/POST store the body in the lease's target file (the
// imported VM's disk in the datastore) and record the upload.
func (h *Harness) serveNFC(w http.ResponseWriter, r *http.Request) {
	p := strings.Split(r.URL.Path, "/")
	if len(p) < 4 {
		http.NotFound(w, r)
		return
	}
	id, name := p[len(p)-2], p[len(p)-1]
	ref := types.ManagedObjectReference{Type: "HttpNfcLease", Value: id}
	l, ok := nfcLease.Load(ref)
	if !ok {
		log.Printf("hypersdk: invalid NFC lease: %s", id)
		http.NotFound(w, r)
		return
	}
	lease := l.(*HttpNfcLease)
	var file string
	var state types.HttpNfcLeaseState
	var entity types.ManagedObjectReference
	Map.WithLock(ref, func() {
		file, ok = lease.files[name]
		state = lease.State
		if lease.Info != nil {
			entity = lease.Info.Entity
		}
	})
	if !ok {
		log.Printf("hypersdk: invalid NFC device id: %s", name)
		http.NotFound(w, r)
		return
	}
	if state != types.HttpNfcLeaseStateReady {
		http.Error(w, fmt.Sprintf("lease is %s, not ready", state), http.StatusConflict)
		return
	}

	switch r.Method {
	case http.MethodGet, http.MethodHead:
		f, err := os.Open(file)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, name, st.ModTime(), f)
	case http.MethodPut, http.MethodPost:
		up := Upload{
			Lease:       id,
			VM:          entity.Value,
			Name:        name,
			Path:        file,
			HTTPMethod:  r.Method,
			ContentType: r.Header.Get("Content-Type"),
		}
		if vm, ok := Map.Get(entity).(*VirtualMachine); ok {
			up.VMName = vm.Name
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		sum := sha256.New()
		n, err := io.Copy(io.MultiWriter(f, sum), r.Body)
		cerr := f.Close()
		up.Size = n
		up.SHA256 = hex.EncodeToString(sum.Sum(nil))
		up.Complete = err == nil && cerr == nil
		h.mu.Lock()
		h.uploads = append(h.uploads, up)
		h.mu.Unlock()
		log.Printf("hypersdk: nfc %s %s: %d bytes (complete=%v)", r.Method, file, n, up.Complete)
		if n > 0 {
			recordUpload(entity, file)
		}
		if errors.Is(err, errCut) {
			panic(http.ErrAbortHandler)
		}
		if err != nil || cerr != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// ---------------------------------------------------------------------------
// Sessions

// ExpireSessions drops every session, as an idle timeout would. The next
// call with an old cookie gets NotAuthenticated.
func ExpireSessions() int {
	sm := Map.SessionManager()
	sessionMutex.Lock()
	n := len(sm.sessions)
	for k := range sm.sessions {
		delete(sm.sessions, k)
	}
	sessionMutex.Unlock()
	pages.Lock()
	pages.m = make(map[string]*pendingResult)
	pages.Unlock()
	return n
}

// ---------------------------------------------------------------------------
// Control API

func writeJSON(w http.ResponseWriter, status int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func controlError(w http.ResponseWriter, status int, format string, a ...interface{}) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, a...)})
}

func decodeJSON(r *http.Request, v interface{}) error {
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	return d.Decode(v)
}

func (h *Harness) serveControl(w http.ResponseWriter, r *http.Request) {
	route := strings.TrimPrefix(r.URL.Path, controlPrefix)
	switch {
	case route == "health" && r.Method == http.MethodGet:
		writeJSON(w, 200, map[string]bool{"ok": true})
	case route == "inventory" && r.Method == http.MethodGet:
		writeJSON(w, 200, BuildInventory())
	case route == "disk" && (r.Method == http.MethodGet || r.Method == http.MethodHead ||
		r.Method == http.MethodPut || r.Method == http.MethodPatch):
		h.serveDisk(w, r)
	case route == "disk/zero" && r.Method == http.MethodPost:
		h.serveDiskZero(w, r)
	case route == "cbt" && r.Method == http.MethodGet:
		writeJSON(w, 200, cbtView())
	case route == "cbt" && r.Method == http.MethodPost:
		var u cbtConfigUpdate
		if err := decodeJSON(r, &u); err != nil {
			controlError(w, 400, "bad cbt config: %s", err)
			return
		}
		cfg, err := updateCBTConfig(u)
		if err != nil {
			controlError(w, 400, "%s", err)
			return
		}
		writeJSON(w, 200, cfg)
	case route == "leases" && r.Method == http.MethodGet:
		h.scanLeases()
		writeJSON(w, 200, leaseViews())
	case route == "leases/expire" && r.Method == http.MethodPost:
		var req struct {
			Lease string `json:"lease"`
		}
		if err := decodeJSON(r, &req); err != nil && err != io.EOF {
			controlError(w, 400, "bad lease expiry: %s", err)
			return
		}
		writeJSON(w, 200, map[string]int{"expired": h.expireLeases(req.Lease)})
	case route == "leases/timeout" && r.Method == http.MethodPost:
		var req struct {
			Seconds *int32 `json:"seconds"`
		}
		if err := decodeJSON(r, &req); err != nil || req.Seconds == nil || *req.Seconds < 0 {
			controlError(w, 400, "want {\"seconds\": N} with N >= 0 (0: not enforced)")
			return
		}
		h.setLeaseTimeoutSeconds(*req.Seconds)
		writeJSON(w, 200, map[string]int32{"seconds": *req.Seconds})
	case route == "faults" && r.Method == http.MethodGet:
		h.mu.Lock()
		v := map[string]interface{}{
			"method": append([]*MethodRule{}, h.method...),
			"cut":    append([]*CutRule{}, h.cut...),
			"lease":  append([]*LeaseRule{}, h.lease...),
		}
		writeJSON(w, 200, v)
		h.mu.Unlock()
	case route == "faults" && r.Method == http.MethodDelete:
		h.mu.Lock()
		h.method, h.cut, h.lease = nil, nil, nil
		h.mu.Unlock()
		writeJSON(w, 200, map[string]bool{"ok": true})
	case route == "faults/method" && r.Method == http.MethodPost:
		var rule MethodRule
		if err := decodeJSON(r, &rule); err != nil {
			controlError(w, 400, "bad method rule: %s", err)
			return
		}
		if rule.Method == "" {
			controlError(w, 400, "method is required")
			return
		}
		if rule.Fault == "" && rule.HTTPStatus == 0 && rule.DelayMs == 0 {
			controlError(w, 400, "one of fault, http_status or delay_ms is required")
			return
		}
		if rule.Fault != "" {
			if _, err := newFault(rule.Fault); err != nil {
				controlError(w, 400, "%s", err)
				return
			}
		}
		if rule.Count <= 0 {
			rule.Count = 1
		}
		h.mu.Lock()
		h.method = append(h.method, &rule)
		h.mu.Unlock()
		writeJSON(w, 200, rule)
	case route == "faults/cut" && r.Method == http.MethodPost:
		var rule CutRule
		if err := decodeJSON(r, &rule); err != nil {
			controlError(w, 400, "bad cut rule: %s", err)
			return
		}
		if rule.Prefix == "" {
			rule.Prefix = nfcPrefix
		}
		if rule.Count <= 0 {
			rule.Count = 1
		}
		if rule.AfterBytes < 0 || rule.After < 0 || rule.HoldMs < 0 {
			controlError(w, 400, "after_bytes, after and hold_ms must be >= 0")
			return
		}
		h.mu.Lock()
		h.cut = append(h.cut, &rule)
		h.mu.Unlock()
		writeJSON(w, 200, rule)
	case route == "faults/lease" && r.Method == http.MethodPost:
		var rule LeaseRule
		if err := decodeJSON(r, &rule); err != nil {
			controlError(w, 400, "bad lease rule: %s", err)
			return
		}
		if rule.Fault != "" {
			if _, err := newFault(rule.Fault); err != nil {
				controlError(w, 400, "%s", err)
				return
			}
		}
		if rule.Count <= 0 {
			rule.Count = 1
		}
		h.mu.Lock()
		h.lease = append(h.lease, &rule)
		h.mu.Unlock()
		writeJSON(w, 200, rule)
	case route == "sessions/expire" && r.Method == http.MethodPost:
		writeJSON(w, 200, map[string]int{"expired": ExpireSessions()})
	case route == "uploads" && r.Method == http.MethodGet:
		h.mu.Lock()
		v := append([]Upload{}, h.uploads...)
		h.mu.Unlock()
		writeJSON(w, 200, v)
	case route == "calls" && r.Method == http.MethodGet:
		h.mu.Lock()
		v := make(map[string]int, len(h.calls))
		for k, n := range h.calls {
			v[k] = n
		}
		h.mu.Unlock()
		writeJSON(w, 200, v)
	default:
		controlError(w, 404, "no control route %s %s", r.Method, r.URL.Path)
	}
}

// findVM finds a VM by name or moref value.
func findVM(id string) *VirtualMachine {
	for _, e := range Map.All("VirtualMachine") {
		vm, ok := e.(*VirtualMachine)
		if !ok {
			continue
		}
		if vm.Self.Value == id || vm.Name == id {
			return vm
		}
	}
	return nil
}

// diskTarget is the file a disk control request works on.
type diskTarget struct {
	vm    *VirtualMachine
	index int
	key   int32
	flat  bool
	path  string
}

// resolveDisk reads ?vm=<name or moref>&disk=<index among the VM's
// disks>[&file=backing|flat]; on failure it has answered the request.
func resolveDisk(w http.ResponseWriter, r *http.Request) (*diskTarget, bool) {
	q := r.URL.Query()
	vm := findVM(q.Get("vm"))
	if vm == nil {
		controlError(w, 404, "no VM named %q", q.Get("vm"))
		return nil, false
	}
	index, err := strconv.Atoi(q.Get("disk"))
	if err != nil || index < 0 {
		controlError(w, 400, "disk must be a disk index (0, 1, ...)")
		return nil, false
	}
	t := &diskTarget{vm: vm, index: index}
	switch q.Get("file") {
	case "", "backing":
	case "flat":
		t.flat = true
	default:
		controlError(w, 400, "file must be backing or flat")
		return nil, false
	}
	var disk exportDisk
	var fault types.BaseMethodFault
	found := false
	Map.WithLock(vm, func() {
		var disks []exportDisk
		disks, fault = exportDisks(vm, vm.Config.Hardware.Device)
		if fault == nil && index < len(disks) {
			disk, found = disks[index], true
		}
	})
	if fault != nil {
		controlError(w, 500, "resolving disks of %s: %T", vm.Name, fault)
		return nil, false
	}
	if !found {
		controlError(w, 404, "VM %s has no disk %d", vm.Name, index)
		return nil, false
	}
	t.key = disk.disk.Key
	t.path = disk.file
	if t.flat {
		t.path = strings.TrimSuffix(t.path, ".vmdk") + "-flat.vmdk"
	}
	return t, true
}

// currentDisk is the VM's disk device now (disks are replaced, not
// modified, when their changeId changes). Call with the VM locked.
func (t *diskTarget) currentDisk() *types.VirtualDisk {
	return findDisk(t.vm.Config.Hardware.Device, t.key)
}

// answer writes the JSON every disk write returns. Call with the VM locked.
func (t *diskTarget) answer(size int64, changeID string) map[string]interface{} {
	out := map[string]interface{}{
		"vm":      t.vm.Self.Value,
		"vm_name": t.vm.Name,
		"disk":    t.index,
		"path":    t.path,
		"size":    size,
	}
	if d := t.currentDisk(); d != nil {
		out["device_key"] = d.Key
		out["file_name"] = backingFileName(d)
		out["capacity_kb"] = d.CapacityInKB
		out["change_id"] = backingChangeID(d)
		list := object.VirtualDeviceList(t.vm.Config.Hardware.Device)
		out["export_key"] = deviceKey(t.vm, list, d)
	}
	if changeID != "" {
		out["change_id"] = changeID
	}
	return out
}

func parseNonNegative(r *http.Request, name string, required bool) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		if required {
			return 0, fmt.Errorf("%s is required", name)
		}
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s must be a non-negative integer", name)
	}
	return n, nil
}

// serveDisk reads (GET/HEAD), seeds (PUT) or writes a range of (PATCH) one
// disk file of a VM. Writes to the flat file of a disk with change tracking
// on are recorded as a change set.
func (h *Harness) serveDisk(w http.ResponseWriter, r *http.Request) {
	t, ok := resolveDisk(w, r)
	if !ok {
		return
	}
	switch r.Method {
	case http.MethodPut:
		h.putDisk(w, r, t)
	case http.MethodPatch:
		h.patchDisk(w, r, t)
	default:
		f, err := os.Open(t.path)
		if err != nil {
			controlError(w, 404, "%s", err)
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, filepath.Base(t.path), st.ModTime(), f)
	}
}

// putDisk replaces the file with the body (atomically); capacity_kb also
// sets the disk's capacityInKB. On a tracked flat file the blocks whose
// content differs are recorded.
func (h *Harness) putDisk(w http.ResponseWriter, r *http.Request, t *diskTarget) {
	var capacityKB int64
	if s := r.URL.Query().Get("capacity_kb"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			controlError(w, 400, "capacity_kb must be a positive integer")
			return
		}
		capacityKB = n
	}
	tmp, err := os.CreateTemp(filepath.Dir(t.path), ".seed-*")
	if err != nil {
		controlError(w, 500, "%s", err)
		return
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, r.Body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		controlError(w, 500, "seeding %s: %s", t.path, err)
		return
	}

	var out map[string]interface{}
	Map.WithLock(t.vm, func() {
		var written, trimmed []int64
		tracked := t.flat && trackingEnabled(t.vm)
		if tracked {
			written, trimmed, err = diffBlocks(t.path, tmp.Name())
			if err != nil {
				return
			}
		}
		if err = os.Rename(tmp.Name(), t.path); err != nil {
			return
		}
		if capacityKB > 0 {
			replaceDisk(t.vm, t.key, func(d *types.VirtualDisk) *types.VirtualDisk {
				nd := *d
				nd.CapacityInKB = capacityKB
				if nd.CapacityInBytes != 0 {
					nd.CapacityInBytes = capacityKB * 1024
				}
				return &nd
			})
		}
		_ = t.vm.updateDiskLayouts()
		changeID := ""
		if tracked && len(written)+len(trimmed) > 0 {
			changeID = recordChange(t.vm, t.key, written, trimmed)
		}
		out = t.answer(n, changeID)
	})
	if err != nil {
		controlError(w, 500, "seeding %s: %s", t.path, err)
		return
	}
	writeJSON(w, 200, out)
}

// patchDisk writes the body at ?offset=N into the file (which grows if
// needed). On a tracked flat file every block the write touches is
// recorded, changed bytes or not, as CBT does for guest writes. Writes to
// a flat file may not pass the disk's capacity.
func (h *Harness) patchDisk(w http.ResponseWriter, r *http.Request, t *diskTarget) {
	offset, err := parseNonNegative(r, "offset", true)
	if err != nil {
		controlError(w, 400, "%s", err)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		controlError(w, 400, "reading the body: %s", err)
		return
	}
	status := 500
	var out map[string]interface{}
	Map.WithLock(t.vm, func() {
		d := t.currentDisk()
		if d == nil {
			status, err = 404, fmt.Errorf("the disk is gone")
			return
		}
		if capacity := diskCapacity(d); t.flat && offset+int64(len(body)) > capacity {
			status, err = 400, fmt.Errorf("writing %d bytes at %d passes the disk's capacity (%d bytes)", len(body), offset, capacity)
			return
		}
		var f *os.File
		f, err = os.OpenFile(t.path, os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			return
		}
		_, err = f.WriteAt(body, offset)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return
		}
		_ = t.vm.updateDiskLayouts()
		changeID := ""
		if t.flat && len(body) > 0 {
			changeID = recordChange(t.vm, t.key, blocksIn(offset, int64(len(body))), nil)
		}
		out = t.answer(int64(len(body)), changeID)
	})
	if err != nil {
		controlError(w, status, "writing %s: %s", t.path, err)
		return
	}
	writeJSON(w, 200, out)
}

// serveDiskZero zeroes ?offset=N&length=M of a disk file (punching a hole
// where the file system can, writing zeros otherwise). On a tracked flat
// file every block touched is recorded: blocks that read as zeros
// afterwards as trimmed, the others (partly zeroed) as written.
func (h *Harness) serveDiskZero(w http.ResponseWriter, r *http.Request) {
	t, ok := resolveDisk(w, r)
	if !ok {
		return
	}
	offset, err := parseNonNegative(r, "offset", true)
	if err == nil {
		var length int64
		length, err = parseNonNegative(r, "length", true)
		if err == nil {
			h.zeroDisk(w, t, offset, length)
			return
		}
	}
	controlError(w, 400, "%s", err)
}

func (h *Harness) zeroDisk(w http.ResponseWriter, t *diskTarget, offset, length int64) {
	var err error
	var out map[string]interface{}
	Map.WithLock(t.vm, func() {
		var f *os.File
		f, err = os.OpenFile(t.path, os.O_RDWR, 0)
		if err != nil {
			return
		}
		defer f.Close()
		var st os.FileInfo
		if st, err = f.Stat(); err != nil {
			return
		}
		end := offset + length
		if end > st.Size() {
			end = st.Size()
		}
		if end <= offset {
			out = t.answer(0, "")
			return
		}
		if err = zeroRange(f, offset, end-offset); err != nil {
			return
		}
		var written, trimmed []int64
		buf := make([]byte, cbtBlockSize)
		for _, b := range blocksIn(offset, end-offset) {
			n, rerr := f.ReadAt(buf, b*cbtBlockSize)
			if rerr != nil && rerr != io.EOF {
				err = rerr
				return
			}
			if isZero(buf[:n]) {
				trimmed = append(trimmed, b)
			} else {
				written = append(written, b)
			}
		}
		changeID := ""
		if t.flat {
			changeID = recordChange(t.vm, t.key, written, trimmed)
		}
		out = t.answer(end-offset, changeID)
	})
	if err != nil {
		controlError(w, 500, "zeroing %s: %s", t.path, err)
		return
	}
	writeJSON(w, 200, out)
}

// zeroRange punches a hole (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE) or
// writes zeros where that is refused.
func zeroRange(f *os.File, offset, length int64) error {
	if err := syscall.Fallocate(int(f.Fd()), 0x2|0x1, offset, length); err == nil {
		return nil
	}
	zeros := make([]byte, 1<<20)
	for done := int64(0); done < length; {
		n := length - done
		if n > int64(len(zeros)) {
			n = int64(len(zeros))
		}
		if _, err := f.WriteAt(zeros[:n], offset+done); err != nil {
			return err
		}
		done += n
	}
	return nil
}
