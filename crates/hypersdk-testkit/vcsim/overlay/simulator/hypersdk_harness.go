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
	"time"

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
	// LeaseTimeout is HttpNfcLeaseInfo.leaseTimeout (seconds) of export
	// leases. It is reported, not enforced.
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

// NewHarness configures the global harness and returns it as the handler of
// the public server. s must have been started with NewServer (which
// registers vcsim's handlers on s.ServeMux).
func NewHarness(s *Service, cfg HarnessConfig) *Harness {
	harness.mu.Lock()
	harness.cfg = cfg
	harness.svc = s
	harness.mu.Unlock()
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
		cw := &cutWriter{ResponseWriter: w, left: rule.AfterBytes}
		cr := &cutReader{rc: r.Body, left: rule.AfterBytes}
		w = cw
		r.Body = cr
		log.Printf("hypersdk: cutting %s %s after %d bytes", r.Method, r.URL.Path, rule.AfterBytes)
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
		name := soapMethodName(body)
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
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}

	h.svc.ServeMux.ServeHTTP(w, r)
}

// soapMethodName returns the local name of the first element in the SOAP Body.
func soapMethodName(body []byte) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok {
			if inBody {
				return se.Name.Local
			}
			if se.Name.Local == "Body" {
				inBody = true
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
	case route == "disk" && (r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodPut):
		h.serveDisk(w, r)
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
		if rule.AfterBytes < 0 {
			controlError(w, 400, "after_bytes must be >= 0")
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

// serveDisk reads (GET) or seeds (PUT) one disk file of a VM:
// ?vm=<name or moref>&disk=<index among the VM's disks>[&file=flat][&capacity_kb=N].
func (h *Harness) serveDisk(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	vm := findVM(q.Get("vm"))
	if vm == nil {
		controlError(w, 404, "no VM named %q", q.Get("vm"))
		return
	}
	index, err := strconv.Atoi(q.Get("disk"))
	if err != nil || index < 0 {
		controlError(w, 400, "disk must be a disk index (0, 1, ...)")
		return
	}
	flat := false
	switch q.Get("file") {
	case "", "backing":
	case "flat":
		flat = true
	default:
		controlError(w, 400, "file must be backing or flat")
		return
	}
	var capacityKB int64
	if s := q.Get("capacity_kb"); s != "" {
		capacityKB, err = strconv.ParseInt(s, 10, 64)
		if err != nil || capacityKB <= 0 {
			controlError(w, 400, "capacity_kb must be a positive integer")
			return
		}
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
		return
	}
	if !found {
		controlError(w, 404, "VM %s has no disk %d", vm.Name, index)
		return
	}
	target := disk.file
	if flat {
		target = strings.TrimSuffix(target, ".vmdk") + "-flat.vmdk"
	}

	if r.Method != http.MethodPut {
		f, err := os.Open(target)
		if err != nil {
			controlError(w, 404, "%s", err)
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, filepath.Base(target), st.ModTime(), f)
		return
	}

	tmp, err := os.CreateTemp(filepath.Dir(target), ".seed-*")
	if err != nil {
		controlError(w, 500, "%s", err)
		return
	}
	n, err := io.Copy(tmp, r.Body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), target)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		controlError(w, 500, "seeding %s: %s", target, err)
		return
	}

	Map.WithLock(vm, func() {
		if capacityKB > 0 {
			disk.disk.CapacityInKB = capacityKB
			if disk.disk.CapacityInBytes != 0 {
				disk.disk.CapacityInBytes = capacityKB * 1024
			}
		}
		_ = vm.updateDiskLayouts()
	})

	backing := disk.disk.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo()
	writeJSON(w, 200, map[string]interface{}{
		"vm":          vm.Self.Value,
		"vm_name":     vm.Name,
		"disk":        index,
		"device_key":  disk.disk.Key,
		"export_key":  disk.key,
		"file_name":   backing.FileName,
		"path":        target,
		"size":        n,
		"capacity_kb": disk.disk.CapacityInKB,
	})
}
