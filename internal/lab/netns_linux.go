package lab

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetns runs fn on a thread inside the named network namespace. Sockets
// fn creates stay in that namespace after it returns.
func InNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when this
		// goroutine ends, rather than reuse a thread in the wrong namespace.
		return err
	}
	runtime.UnlockOSThread()
	return ferr
}
