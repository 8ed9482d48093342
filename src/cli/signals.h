// How the process meets signals, installed once by main: SIGINT and SIGTERM remove the output temporary files that
// exist and end the process at once with 128 + the signal's number, except that inside an InterruptScope the first
// SIGINT only sets interrupt_flag() (a loop that polls it stops and reports what it has; a second SIGINT ends the
// process at once); SIGBUS (a mapped model file truncated or changed) says so in one line and exits 1; SIGPIPE and
// SIGXFSZ are ignored, so a write to a closed pipe or past the file size limit fails with an error that is
// reported instead of killing the process silently.
#pragma once

#include <atomic>

namespace tessera::cli {

void install_signal_handlers();

// Set by the first SIGINT while an InterruptScope lives.
const std::atomic<bool>& interrupt_flag();
inline bool interrupted() { return interrupt_flag().load(std::memory_order_relaxed); }

// While one lives, the first SIGINT (and with InterruptOrTerminate also SIGTERM, for a server) asks the work to
// stop instead of ending the process. Not nested.
class InterruptScope {
 public:
  enum class Signals { Interrupt, InterruptOrTerminate };
  explicit InterruptScope(Signals signals = Signals::Interrupt);
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

// For an interactive loop (chat on a terminal): while one lives, no SIGINT ends the process; each one is counted
// (sigint_count()), so a reply being generated can stop at its next token. SIGTERM still ends the process.
class InteractiveInterrupts {
 public:
  InteractiveInterrupts();
  ~InteractiveInterrupts();
  InteractiveInterrupts(const InteractiveInterrupts&) = delete;
  InteractiveInterrupts& operator=(const InteractiveInterrupts&) = delete;
  static int sigint_count();
};

// Within an InteractiveInterrupts, while one lives: a SIGINT interrupts a blocking read with EINTR, so a line
// editor gives up its line. Only around reads: a write to a slow terminal that a SIGINT interrupted would fail
// and lose what stdio had buffered, so outside these scopes interrupted calls carry on.
class InterruptibleReads {
 public:
  InterruptibleReads();
  ~InterruptibleReads();
  InterruptibleReads(const InterruptibleReads&) = delete;
  InterruptibleReads& operator=(const InterruptibleReads&) = delete;
};

// Makes sure file descriptors 0, 1 and 2 are open, so that a file opened later never takes the place of a closed
// standard stream. A closed stdout or stderr becomes /dev/null opened read-only: writing to it fails (EBADF) and
// is reported, as writing to the closed stream would.
void reserve_standard_streams();

}  // namespace tessera::cli
