package datapath

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

func TestFloodMsgRoundTrip(t *testing.T) {
	for _, m := range []floodMsg{
		{kind: floodHello, seq: 1, vip: testVIP, name: "n1"},
		{kind: floodProbe, seq: 1<<32 - 1, vip: testVIP6, name: ""},
		{kind: floodProbe, seq: 7, vip: testVIP6, name: strings.Repeat("x", floodMaxName)},
	} {
		got, ok := parseFloodMsg(m.appendTo(nil))
		if !ok || got != m {
			t.Errorf("parse(append(%+v)) = %+v, %v", m, got, ok)
		}
	}
	long := floodMsg{kind: floodHello, vip: testVIP, name: strings.Repeat("y", 100)}
	if got, ok := parseFloodMsg(long.appendTo(nil)); !ok || got.name != long.name[:floodMaxName] {
		t.Errorf("a long name is cut to %d bytes: got %q, %v", floodMaxName, got.name, ok)
	}
}

func TestParseFloodMsgRefuses(t *testing.T) {
	good := floodMsg{kind: floodHello, seq: 1, vip: testVIP, name: "n1"}.appendTo(nil)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, b := range map[string][]byte{
		"empty":         nil,
		"short":         good[:floodMsgMin-1],
		"magic":         mod(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version":       mod(func(b []byte) []byte { b[4] = 2; return b }),
		"kind 0":        mod(func(b []byte) []byte { b[5] = 0; return b }),
		"kind 3":        mod(func(b []byte) []byte { b[5] = 3; return b }),
		"name past end": mod(func(b []byte) []byte { b[26] = 3; return b }),
		"name too long": mod(func(b []byte) []byte { b[26] = floodMaxName + 1; return append(b, make([]byte, 80)...) }),
	} {
		if m, ok := parseFloodMsg(b); ok {
			t.Errorf("%s: parsed as %+v", name, m)
		}
	}
}

func FuzzParseFloodMsg(f *testing.F) {
	f.Add(floodMsg{kind: floodHello, seq: 1, vip: testVIP, name: "n1"}.appendTo(nil))
	f.Add(floodMsg{kind: floodProbe, seq: 2, vip: testVIP6, name: "node-2"}.appendTo(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := parseFloodMsg(b)
		if !ok {
			return
		}
		if again, ok := parseFloodMsg(m.appendTo(nil)); !ok || again != m {
			t.Fatalf("%+v does not survive a round trip: %+v, %v", m, again, ok)
		}
	})
}

// The verdict per peer: judged only once heard for a window, missing when
// its hellos arrive and its probes do not, forgotten when silent.
func TestFloodWatchReport(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	macA := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	type event struct {
		at   float64
		mac  net.HardwareAddr
		name string
		kind uint8
	}
	// Every 2 s until end: hellos from both, probes from those listed.
	every := func(from, to float64, mac net.HardwareAddr, name string, kind uint8) []event {
		var e []event
		for s := from; s <= to; s += 2 {
			e = append(e, event{s, mac, name, kind})
		}
		return e
	}
	tests := []struct {
		name    string
		events  []event
		now     float64
		state   FloodState
		peers   []string
		missing []string
	}{
		{"nobody", nil, 30, FloodUnknown, []string{}, []string{}},
		{"heard too briefly", append(every(0, 8, macA, "a", floodHello), every(0, 8, macA, "a", floodProbe)...), 8, FloodUnknown, []string{}, []string{}},
		{"hellos and probes", append(every(0, 20, macA, "a", floodHello), every(0, 20, macA, "a", floodProbe)...), 20, FloodOK, []string{"a"}, []string{}},
		{"hellos, no probes", every(0, 20, macA, "a", floodHello), 20, FloodBroken, []string{"a"}, []string{"a"}},
		{"probes stopped 12 s ago", append(every(0, 30, macA, "a", floodHello), every(0, 18, macA, "a", floodProbe)...), 30, FloodBroken, []string{"a"}, []string{"a"}},
		{"probes stopped 8 s ago", append(every(0, 30, macA, "a", floodHello), every(0, 22, macA, "a", floodProbe)...), 30, FloodOK, []string{"a"}, []string{}},
		{"one of two missing", append(append(every(0, 20, macA, "a", floodHello), every(0, 20, macB, "b", floodHello)...), every(0, 20, macB, "b", floodProbe)...), 20, FloodBroken, []string{"a", "b"}, []string{"a"}},
		{"silent peer not judged", every(0, 20, macA, "a", floodHello), 35, FloodUnknown, []string{}, []string{}},
		{"probes alone tell nothing", every(0, 20, macA, "a", floodProbe), 20, FloodUnknown, []string{}, []string{}},
		{"same name, two MACs", append(every(0, 20, macA, "a", floodHello), every(0, 20, macB, "a", floodHello)...), 20, FloodBroken, []string{"a", "a"}, []string{"a", "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f floodWatch
			slices.SortStableFunc(tt.events, func(a, b event) int {
				switch {
				case a.at < b.at:
					return -1
				case a.at > b.at:
					return 1
				}
				return 0
			})
			for _, e := range tt.events {
				f.saw(e.mac, floodMsg{kind: e.kind, vip: testVIP, name: e.name}, at(e.at))
			}
			r := f.report(at(tt.now))
			if r.State != tt.state || !slices.Equal(r.Peers, tt.peers) || !slices.Equal(r.Missing, tt.missing) {
				t.Errorf("report = %+v, want %v, peers %v, missing %v", r, tt.state, tt.peers, tt.missing)
			}
		})
	}
	var f floodWatch
	f.saw(macA, floodMsg{kind: floodHello, vip: testVIP, name: "a"}, at(0))
	f.report(at(61))
	if len(f.peers) != 0 {
		t.Errorf("a peer silent for 61 s is still remembered: %v", f.peers)
	}
}

// Probes are IP packets every node must see: the capture filters pass them
// whatever their hash, and the kernel path never takes them (the stack would
// only drop them).
func TestProbesReachUserSpace(t *testing.T) {
	src := net.HardwareAddr{2, 0, 0, 0, 0, 7}
	for _, tc := range []struct {
		vip netip.Addr
		mac net.HardwareAddr
		cfg hash.Config
	}{
		{testVIP, testClusterMAC, hash.Config{Mode: hash.SourceIP, TotalNodes: 2}},
		{testVIP6, testClusterMAC6, hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 2, Compat: hash.NFTables}},
	} {
		frame := probeFrame(tc.mac, src, floodMsg{kind: floodProbe, seq: 1, vip: tc.vip, name: "n2"})
		var p ipPacket
		if tc.vip.Is6() && !parseIPv6(frame[ethHdrLen:], &p) || tc.vip.Is4() && !parseIPv4(frame[ethHdrLen:], &p) {
			t.Fatalf("%s: probe does not parse", tc.vip)
		}
		if p.proto != protoFloodProbe || p.dst != tc.vip.As16() {
			t.Fatalf("%s: probe parsed as protocol %d to %v", tc.vip, p.proto, p.dst)
		}
		if m, ok := parseFloodMsg(p.l4); !ok || m.name != "n2" {
			t.Fatalf("%s: probe payload %+v, %v", tc.vip, m, ok)
		}
		for _, pass := range []nodeset.NodeSet{0, nodeset.NodeSet(0).Add(1), nodeset.NodeSet(0).Add(2)} {
			vm := ownershipVM(t, tc.vip, tc.mac, tc.cfg, pass)
			if n, err := vm.Run(frame); err != nil || n == 0 {
				t.Errorf("%s: capture filter passing %v drops the probe (%d, %v)", tc.vip, pass, n, err)
			}
		}
		if os.Geteuid() == 0 {
			take := loadKernelPathAt(t, tc.vip, tc.mac, tc.cfg, nodeset.NodeSet(0).Add(1), 0, kernelAllButICMP)
			if taken, dropped := take(frame); taken || dropped {
				t.Errorf("%s: the kernel path took (%v) or dropped (%v) a probe", tc.vip, taken, dropped)
			}
		}
	}
}
