package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Hook events, the program's first argument.
const (
	eventServing    = "serving"     // serving VIP BEFORE AFTER
	eventMemberUp   = "member-up"   // member-up NAME ADDR
	eventMemberDown = "member-down" // member-down NAME ADDR
)

// hookEvent is one run of the --notify program.
type hookEvent struct {
	args []string
	env  []string
}

// hookQueue bounds the events waiting for the program: a program slower
// than the changes it is told about loses the oldest news, not the daemon.
const hookQueue = 256

// hooks runs the --notify program, like keepalived's notify scripts, once
// per event, in order, in a goroutine of its own: the daemon never waits
// for it. A run longer than the timeout is killed (with its children), and
// every failure is logged.
type hooks struct {
	program string
	timeout time.Duration
	node    string // this node's member name, "" without membership
	log     *slog.Logger
	queue   chan hookEvent
	done    chan struct{}
}

func newHooks(program string, timeout time.Duration, node string, log *slog.Logger) *hooks {
	h := &hooks{program: program, timeout: timeout, node: node, log: log, queue: make(chan hookEvent, hookQueue), done: make(chan struct{})}
	if program != "" {
		go h.run()
	} else {
		close(h.done)
	}
	return h
}

// serving reports that the numbers this node serves for vip changed.
func (h *hooks) serving(vip, before, after string) {
	h.fire(hookEvent{
		args: []string{eventServing, vip, before, after},
		env:  []string{"CLUSTERIP_VIP=" + vip, "CLUSTERIP_BEFORE=" + before, "CLUSTERIP_AFTER=" + after},
	})
}

// member reports a member going up or down.
func (h *hooks) member(up bool, name, addr string) {
	event := eventMemberDown
	if up {
		event = eventMemberUp
	}
	h.fire(hookEvent{
		args: []string{event, name, addr},
		env:  []string{"CLUSTERIP_MEMBER=" + name, "CLUSTERIP_MEMBER_ADDR=" + addr},
	})
}

func (h *hooks) fire(e hookEvent) {
	if h == nil || h.program == "" {
		return
	}
	e.env = append(e.env, "CLUSTERIP_EVENT="+e.args[0], "CLUSTERIP_NODE="+h.node)
	select {
	case h.queue <- e:
	default:
		h.log.Warn("notify: the program is too slow; event dropped", "program", h.program, "event", strings.Join(e.args, " "))
	}
}

// hookDrainAtStop is how long a stopping daemon waits for the events it
// queued last (this node no longer serving anything): stopping must stay
// well under a second.
const hookDrainAtStop = 500 * time.Millisecond

// close stops taking events and waits, briefly, for the queue to drain.
func (h *hooks) close() {
	if h == nil || h.program == "" {
		return
	}
	close(h.queue)
	select {
	case <-h.done:
	case <-time.After(hookDrainAtStop):
		h.log.Warn("notify: stopping with events not run yet", "program", h.program)
	}
}

func (h *hooks) run() {
	defer close(h.done)
	for e := range h.queue {
		h.exec(e)
	}
}

func (h *hooks) exec(e hookEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.program, e.args...)
	cmd.Env = append(os.Environ(), e.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 100 * time.Millisecond
	var out bytes.Buffer
	lw := &limitedWriter{w: &out, n: 1024} // one writer for both: exec then calls it from one goroutine at a time
	cmd.Stdout, cmd.Stderr = lw, lw
	start := time.Now()
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		h.log.Error("notify: program killed after its timeout", "program", h.program, "args", e.args, "timeout", h.timeout)
	case err != nil:
		h.log.Error("notify: program failed", "program", h.program, "args", e.args, "err", err, "output", strings.TrimSpace(out.String()))
	default:
		h.log.Debug("notify: program ran", "program", h.program, "args", e.args, "took", time.Since(start))
	}
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
