// hypersdk vcsim harness: HttpNfcLease timeouts, which vcsim 0.24 reports
// but never enforces.
//
// Copied into github.com/vmware/govmomi/simulator at build time (see
// ../../build.sh); documented in ../../README.md ("Lease timeouts").
//
// Every NFC lease (ExportVm/ExportSnapshot and vcsim's ImportVApp) has
// info.leaseTimeout = the harness's lease timeout (import leases too:
// vcsim's own 30000 s is replaced when the lease is first seen, before the
// ImportVApp answer leaves the server). A lease that is `ready` and gets no
// HttpNfcLeaseProgress for longer than that goes to state `error` with a
// `Timedout` fault; HttpNfcLeaseProgress and HttpNfcLeaseComplete on it then
// answer a `Timedout` SOAP fault, and its NFC URLs answer 409.
// HttpNfcLeaseAbort still releases it. The clock starts when the lease is
// first seen `ready`; only HttpNfcLeaseProgress renews it (transfers do not,
// as on vSphere). A watcher checks every 100 ms.

package simulator

import (
	"fmt"
	"log"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

type leaseWatch struct {
	ref           types.ManagedObjectReference
	kind          string // "export" or "import"
	entity        types.ManagedObjectReference
	timeout       time.Duration
	created       time.Time
	lastRenew     time.Time
	ready         bool
	progressCalls int
	lastPercent   int32
	timedOut      bool
	forceExpire   bool
}

var leaseWatches = struct {
	sync.Mutex
	m       map[string]*leaseWatch
	exports map[string]bool
}{m: make(map[string]*leaseWatch), exports: make(map[string]bool)}

// markExportLease remembers that a lease was made by ExportVm/ExportSnapshot.
func markExportLease(ref types.ManagedObjectReference) {
	leaseWatches.Lock()
	leaseWatches.exports[ref.Value] = true
	leaseWatches.Unlock()
}

// LeaseView is one lease in GET /_hypersdk/leases.
type LeaseView struct {
	Lease          string `json:"lease"`
	Kind           string `json:"kind"`
	Entity         string `json:"entity"`
	State          string `json:"state"`
	Fault          string `json:"fault,omitempty"`
	LeaseTimeout   int64  `json:"lease_timeout"`
	ProgressCalls  int    `json:"progress_calls"`
	LastPercent    int32  `json:"last_percent"`
	MsSinceRenewal int64  `json:"ms_since_renewal"`
	TimedOut       bool   `json:"timed_out"`
}

// scanLeases registers new leases, replaces vcsim's import lease timeout,
// forgets finished leases and expires leases not renewed in time.
func (h *Harness) scanLeases() {
	now := time.Now()
	timeout := h.leaseTimeoutSeconds()
	live := make(map[string]bool)
	nfcLease.Range(func(k, v interface{}) bool {
		ref, ok := k.(types.ManagedObjectReference)
		if !ok {
			return true
		}
		lease, ok := v.(*HttpNfcLease)
		if !ok {
			return true
		}
		live[ref.Value] = true
		leaseWatches.Lock()
		w := leaseWatches.m[ref.Value]
		if w == nil {
			w = &leaseWatch{ref: ref, kind: "import", timeout: time.Duration(timeout) * time.Second, created: now, lastRenew: now}
			if leaseWatches.exports[ref.Value] {
				w.kind = "export"
			}
			leaseWatches.m[ref.Value] = w
		}
		if leaseWatches.exports[ref.Value] {
			// Marked just after vcsim registered it: a scan in between
			// took it for an import lease.
			w.kind = "export"
		}
		leaseWatches.Unlock()

		Map.WithLock(ref, func() {
			leaseWatches.Lock()
			defer leaseWatches.Unlock()
			if lease.Info != nil {
				w.entity = lease.Info.Entity
				if timeout > 0 && lease.Info.LeaseTimeout != timeout && w.kind == "import" && !w.ready {
					lease.Info.LeaseTimeout = int32(w.timeout / time.Second)
				}
			}
			if lease.State != types.HttpNfcLeaseStateReady {
				if !w.ready {
					w.lastRenew = now
				}
				return
			}
			if !w.ready {
				w.ready = true
				w.lastRenew = now
				return
			}
			if !w.timedOut && (w.forceExpire || (w.timeout > 0 && now.Sub(w.lastRenew) > w.timeout)) {
				w.timedOut = true
				lease.State = types.HttpNfcLeaseStateError
				lease.Error = &types.LocalizedMethodFault{
					Fault: &types.Timedout{},
					LocalizedMessage: fmt.Sprintf("Operation timed out: lease %s got no HttpNfcLeaseProgress for %s",
						ref.Value, w.timeout),
				}
				log.Printf("hypersdk: lease %s timed out after %s without HttpNfcLeaseProgress", ref.Value, w.timeout)
			}
		})
		return true
	})
	leaseWatches.Lock()
	for id := range leaseWatches.m {
		if !live[id] {
			delete(leaseWatches.m, id)
			delete(leaseWatches.exports, id)
		}
	}
	leaseWatches.Unlock()
}

// watchLeases runs scanLeases every 100 ms.
func (h *Harness) watchLeases() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for range t.C {
		h.scanLeases()
	}
}

// leaseCall is called before vcsim serves HttpNfcLeaseProgress or
// HttpNfcLeaseComplete: it renews the lease on progress, and returns a
// Timedout fault for a lease that timed out.
func (h *Harness) leaseCall(method string, args map[string]string) error {
	h.scanLeases()
	id := args["_this"]
	leaseWatches.Lock()
	defer leaseWatches.Unlock()
	w := leaseWatches.m[id]
	if w == nil {
		return nil
	}
	if w.timedOut {
		return fmt.Errorf("lease %s timed out (no HttpNfcLeaseProgress for %s)", id, w.timeout)
	}
	if method == "HttpNfcLeaseProgress" {
		w.progressCalls++
		w.lastRenew = time.Now()
		if p, err := strconv.Atoi(args["percent"]); err == nil {
			w.lastPercent = int32(p)
		}
	}
	return nil
}

// expireLeases times out the lease `id` (all ready leases when empty) now.
func (h *Harness) expireLeases(id string) int {
	h.scanLeases()
	leaseWatches.Lock()
	n := 0
	for _, w := range leaseWatches.m {
		if (id == "" || w.ref.Value == id) && w.ready && !w.timedOut {
			w.forceExpire = true
			n++
		}
	}
	leaseWatches.Unlock()
	h.scanLeases()
	return n
}

func leaseViews() []LeaseView {
	out := []LeaseView{}
	now := time.Now()
	leaseWatches.Lock()
	watches := make([]*leaseWatch, 0, len(leaseWatches.m))
	for _, w := range leaseWatches.m {
		watches = append(watches, w)
	}
	leaseWatches.Unlock()
	for _, w := range watches {
		v, ok := nfcLease.Load(w.ref)
		if !ok {
			continue
		}
		lease := v.(*HttpNfcLease)
		var view LeaseView
		Map.WithLock(w.ref, func() {
			leaseWatches.Lock()
			defer leaseWatches.Unlock()
			view = LeaseView{
				Lease:          w.ref.Value,
				Kind:           w.kind,
				Entity:         w.entity.Value,
				State:          string(lease.State),
				LeaseTimeout:   int64(w.timeout / time.Second),
				ProgressCalls:  w.progressCalls,
				LastPercent:    w.lastPercent,
				MsSinceRenewal: now.Sub(w.lastRenew).Milliseconds(),
				TimedOut:       w.timedOut,
			}
			if lease.Error != nil && lease.Error.Fault != nil {
				view.Fault = fmt.Sprintf("%T", lease.Error.Fault)
				if len(view.Fault) > 7 && view.Fault[:7] == "*types." {
					view.Fault = view.Fault[7:]
				}
			}
		})
		out = append(out, view)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Lease < out[j].Lease })
	return out
}
