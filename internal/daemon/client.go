package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

var errNoDaemon = errors.New("no daemon listening")

// Client talks to a running daemon over its control socket.
type Client struct {
	Socket string
}

func (c Client) call(req request) (response, error) {
	conn, err := net.DialTimeout("unix", c.Socket, 2*time.Second)
	if err != nil {
		return response{}, dialError(c.Socket, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return response{}, fmt.Errorf("send to daemon on %s: %w", c.Socket, err)
	}
	var resp response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return response{}, fmt.Errorf("read from daemon on %s: %w", c.Socket, err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// dialError says why the daemon's socket could not be reached, in the
// words an operator needs: nobody listening is not the same as not being
// allowed to ask.
func dialError(socket string, err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("control socket %s: permission denied (the daemon answers root only; run as root)", socket)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w on %s (start it with: clusterctl daemon)", errNoDaemon, socket)
	}
	return fmt.Errorf("control socket %s: %w", socket, err)
}

// New creates a cluster.
func (c Client) New(s Spec) error {
	_, err := c.call(request{Op: opNew, Args: s.Args()})
	return err
}

// Delete removes the cluster of a VIP.
func (c Client) Delete(vip string) error {
	_, err := c.call(request{Op: opDelete, VIP: vip})
	return err
}

// Drain hands this node's numbers of a cluster to the others while it keeps
// serving the connections it has, for at most timeout (0: until they end;
// nil: as an earlier drain said, else until they end).
func (c Client) Drain(vip string, timeout *time.Duration) error {
	_, err := c.call(request{Op: opDrain, VIP: vip, Timeout: timeout})
	return err
}

// Resume takes a drained node's numbers back.
func (c Client) Resume(vip string) error {
	_, err := c.call(request{Op: opResume, VIP: vip})
	return err
}

// Status returns the daemon's status document.
func (c Client) Status() (*Status, error) {
	resp, err := c.call(request{Op: opStatus})
	if err == nil && resp.Status == nil {
		err = fmt.Errorf("daemon on %s sent no status", c.Socket)
	}
	return resp.Status, err
}

// Save returns the running clusters in the config file format.
func (c Client) Save() (string, error) {
	resp, err := c.call(request{Op: opSave})
	return resp.Text, err
}

// Reload has the daemon re-read its config file and apply the
// difference; it returns what changed.
func (c Client) Reload() (string, error) {
	resp, err := c.call(request{Op: opReload})
	return resp.Text, err
}
