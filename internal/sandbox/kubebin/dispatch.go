package kubebin

// This file is also the dispatcher of the multi-call program kube:
// writeModule copies it into the tools module as kube/dispatch.go in package
// main. It may therefore use the standard library only.

import "path/filepath"

// Dispatch picks the command a multi-call program runs and the os.Args that
// command should see. The program is started either through a link named
// after the command (argv[0] "/cache/bin/kube-apiserver"), whose arguments
// pass unchanged, or by its own name with the command first ("kube
// kube-apiserver --version"), which is dropped so the command finds its name
// in argv[0] and its flags after it, as when it is a program of its own. ok is
// false when neither names a command.
func Dispatch(argv []string, isCommand func(string) bool) (command string, args []string, ok bool) {
	if len(argv) == 0 {
		return "", nil, false
	}
	if name := filepath.Base(argv[0]); isCommand(name) {
		return name, argv, true
	}
	if len(argv) > 1 && isCommand(argv[1]) {
		return argv[1], argv[1:], true
	}
	return "", nil, false
}
