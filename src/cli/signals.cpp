#include "cli/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/output_file.h"

namespace tessera::cli {
namespace {

std::atomic<bool> g_interrupted{false};
std::atomic<bool> g_graceful{false};
std::atomic<bool> g_graceful_terminate{false};
std::atomic<int> g_sigint_count{0};

extern "C" void on_interactive_sigint(int) { g_sigint_count.fetch_add(1); }

void say(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_termination(int sig) {
  const bool asks_to_stop = sig == SIGINT || (sig == SIGTERM && g_graceful_terminate.load());
  if (asks_to_stop && g_graceful.load() && !g_interrupted.exchange(true)) {
    const int saved_errno = errno;  // the interrupted code may be about to read it
    say("\ninterrupted: stopping (Ctrl-C again quits at once)\n");
    errno = saved_errno;
    return;
  }
  io::remove_temp_files();
  _exit(128 + sig);
}

extern "C" void on_bus_error(int) {
  io::remove_temp_files();
  say("\nerror: the model file changed or was truncated while in use\n");
  _exit(1);
}

// SA_RESTART by default: a write blocked on a full pipe or a slow terminal carries on after a SIGINT instead of
// failing with EINTR.
void handle(int sig, void (*handler)(int), int flags = SA_RESTART) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = flags;
  sigaction(sig, &action, nullptr);
}

}  // namespace

void install_signal_handlers() {
  handle(SIGINT, on_termination);
  handle(SIGTERM, on_termination);
  handle(SIGBUS, on_bus_error);
  handle(SIGPIPE, SIG_IGN);
  handle(SIGXFSZ, SIG_IGN);
}

const std::atomic<bool>& interrupt_flag() { return g_interrupted; }

InterruptScope::InterruptScope(Signals signals) {
  g_interrupted.store(false);
  g_graceful_terminate.store(signals == Signals::InterruptOrTerminate);
  g_graceful.store(true);
}

InterruptScope::~InterruptScope() {
  g_graceful.store(false);
  g_graceful_terminate.store(false);
}

InteractiveInterrupts::InteractiveInterrupts() {
  g_sigint_count.store(0);
  handle(SIGINT, on_interactive_sigint);
}

InteractiveInterrupts::~InteractiveInterrupts() { handle(SIGINT, on_termination); }

int InteractiveInterrupts::sigint_count() { return g_sigint_count.load(); }

InterruptibleReads::InterruptibleReads() { handle(SIGINT, on_interactive_sigint, 0); }

InterruptibleReads::~InterruptibleReads() { handle(SIGINT, on_interactive_sigint); }

void reserve_standard_streams() {
  for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // open() returns the lowest free descriptor, which is this one.
    const int opened = ::open("/dev/null", fd == STDIN_FILENO ? O_WRONLY : O_RDONLY);
    if (opened >= 0 && opened != fd) ::close(opened);
  }
}

}  // namespace tessera::cli
