// Package nodeset holds the set of CLUSTERIP node numbers a machine answers
// for, and the grammar of the control file through which it is changed.
//
// The control file mirrors the kernel's /proc/net/ipt_CLUSTERIP/<address>:
// reading it yields the held nodes as "1,2,5\n", and each write of "+N" or
// "-N" takes over or gives up node N, so that a failover tool written for
// the kernel target keeps working. ParseCommand and Apply reproduce the
// kernel's validation; the mapping of their errors onto errno values, which
// such tools observe, is left to the file system that serves the file.
package nodeset
