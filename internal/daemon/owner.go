package daemon

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"
)

// resolveOwner turns --control-owner's USER[:GROUP] into numbers, names
// looked up in the host's user and group databases, numbers taken as they
// are; the group defaults to the user's primary group.
func resolveOwner(owner string) (uid, gid uint32, err error) {
	name, group, hasGroup := strings.Cut(owner, ":")
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		uid, gid = uint32(n), uint32(n)
		if u, err := user.LookupId(name); err == nil {
			g, _ := strconv.ParseUint(u.Gid, 10, 32)
			gid = uint32(g)
		}
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			return 0, 0, fmt.Errorf("--control-owner %s: no user %q", owner, name)
		}
		n, _ := strconv.ParseUint(u.Uid, 10, 32)
		g, _ := strconv.ParseUint(u.Gid, 10, 32)
		uid, gid = uint32(n), uint32(g)
	}
	if !hasGroup {
		return uid, gid, nil
	}
	if n, err := strconv.ParseUint(group, 10, 32); err == nil {
		return uid, uint32(n), nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, 0, fmt.Errorf("--control-owner %s: no group %q", owner, group)
	}
	n, _ := strconv.ParseUint(g.Gid, 10, 32)
	return uid, uint32(n), nil
}
