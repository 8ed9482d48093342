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

void say(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_termination(int sig) {
  if (sig == SIGINT && g_graceful.load() && !g_interrupted.exchange(true)) {
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

void handle(int sig, void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  // SA_RESTART: a write blocked on a full pipe carries on after the first SIGINT instead of failing with EINTR.
  action.sa_flags = SA_RESTART;
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

InterruptScope::InterruptScope() {
  g_interrupted.store(false);
  g_graceful.store(true);
}

InterruptScope::~InterruptScope() { g_graceful.store(false); }

void reserve_standard_streams() {
  for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    // open() returns the lowest free descriptor, which is this one.
    const int opened = ::open("/dev/null", fd == STDIN_FILENO ? O_WRONLY : O_RDONLY);
    if (opened >= 0 && opened != fd) ::close(opened);
  }
}

}  // namespace tessera::cli
