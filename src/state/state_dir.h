// The daemon's state directory: where `gpumgr serve` keeps what must survive a restart (the
// history of job kinds, history.db). `gpumgr serve --state-dir DIR` overrides the default.
//
// The folder is created with mode 0700, as root too: everything in it belongs to the daemon
// alone (clients ask the daemon over its socket, never read these files), and the history
// names the kinds of jobs that ran there. It matches the XDG base directory rule for
// $XDG_STATE_HOME. A folder that already exists keeps the mode it has.
//
// Both functions may be called from any thread, though default_state_dir() reads the
// environment: like getenv, it must not race with a setenv elsewhere.
#pragma once

#include <string>

#include "gpumgr/status.h"

namespace gpumgr::state {

// /var/lib/gpumgr when the effective uid is 0; else $XDG_STATE_HOME/gpumgr when that is set
// to an absolute path; else $HOME/.local/state/gpumgr (the home from the password database
// when HOME is unset or relative). Empty when no home can be found.
std::string default_state_dir();
// The rule itself, without the environment (for tests): `home` is the home folder found
// (empty: none); `xdg_state_home` and `home` may be null.
std::string default_state_dir_for(bool root, const char* xdg_state_home, const std::string& home);

// Creates `dir` and its missing parents (mode 0700 each) if needed. kFailedPrecondition,
// naming the folder, when `dir` or a parent is a file, when `dir` is not writable and
// searchable by this process (effective ids), or when a folder cannot be created (the errno
// text).
Status prepare_state_dir(const std::string& dir);

}  // namespace gpumgr::state
