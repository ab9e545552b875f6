package lab

import "os/exec"

var (
	execLookPath = exec.LookPath
	execCommand  = exec.Command
)
