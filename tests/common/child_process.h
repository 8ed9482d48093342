// Runs the tessera binary as a child process with what a shell command does not give a test: its standard
// streams set up by hand, resource limits, signals sent at a chosen moment, and every wait bounded in time.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/fixtures.h"

namespace tessera::test {

struct ChildExit {
  bool exited = false;     // ended by exit(); else by a signal (or still running when timed_out)
  int code = -1;           // exit status when exited
  int signal = 0;          // the signal that ended it otherwise
  bool timed_out = false;  // killed by the test after its time limit
  std::string out, err;    // what it wrote to the captured streams
};

struct ChildOptions {
  // Runs in the child between fork and exec (after stdin is /dev/null and stdout/stderr are the capture pipes):
  // redirect a stream, set a resource limit. Only async-signal-safe calls.
  std::function<void()> before_exec;
  // false: stdout is left in its pipe, which fills and then blocks the child's writes (see stdout_fd()).
  bool drain_stdout = true;
};

class Child {
 public:
  using Options = ChildOptions;

  explicit Child(const std::vector<std::string>& args, const Options& options = {}) {
    int out_pipe[2], err_pipe[2];
    if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> argv_storage = {tessera_binary()};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_storage) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      const int null = ::open("/dev/null", O_RDONLY);
      dup2(null, STDIN_FILENO);
      dup2(out_pipe[1], STDOUT_FILENO);
      dup2(err_pipe[1], STDERR_FILENO);
      signal(SIGPIPE, SIG_DFL);
      if (options.before_exec) options.before_exec();
      execv(argv[0], argv.data());
      _exit(127);
    }
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    out_fd_ = out_pipe[0];
    err_fd_ = err_pipe[0];
    drain_stdout_ = options.drain_stdout;
  }

  ~Child() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  void send(int sig) const { kill(pid_, sig); }
  int stdout_fd() const { return out_fd_; }
  // Reads the child's stdout from now on (after a test has let it fill).
  void start_draining_stdout() { drain_stdout_ = true; }
  // Closes our end of the child's stdout pipe: its next write meets a broken pipe.
  void close_stdout() {
    if (out_fd_ >= 0) ::close(out_fd_);
    out_fd_ = -1;
  }

  // Reads the child's output until `done()` holds or `timeout` passes; returns whether it held.
  bool read_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= end) return false;
      if (!pump(std::chrono::milliseconds(20)) && !done()) return false;  // both streams closed
    }
    return true;
  }
  bool wait_for_stdout(std::string_view needle, std::chrono::milliseconds timeout) {
    return read_until([&] { return out_.find(needle) != std::string::npos; }, timeout);
  }
  bool wait_for_stderr(std::string_view needle, std::chrono::milliseconds timeout) {
    return read_until([&] { return err_.find(needle) != std::string::npos; }, timeout);
  }
  // With drain_stdout off: waits until the child's writes to stdout are blocked, that is until its pipe is full
  // (within 96 bytes of its size, which before_exec may have shrunk) and stays so for three looks 200 ms apart
  // (a generation writes hundreds of pieces in that time).
  bool wait_until_stdout_blocked(std::chrono::milliseconds timeout) {
    int last = -1, unchanged = 0;
    return read_until(
        [&] {
          // Read at every look: the child may shrink the pipe after this call began.
          const int capacity = fcntl(out_fd_, F_GETPIPE_SZ);
          int queued = 0;
          ioctl(out_fd_, FIONREAD, &queued);
          unchanged = queued >= capacity - 96 && queued == last ? unchanged + 1 : 0;
          last = queued;
          if (unchanged < 3) std::this_thread::sleep_for(std::chrono::milliseconds(200));
          return unchanged >= 3;
        },
        timeout);
  }

  // Whether the child has ended, reading its output meanwhile for `period`.
  bool ends_within(std::chrono::milliseconds period) {
    const auto end = std::chrono::steady_clock::now() + period;
    while (std::chrono::steady_clock::now() < end) {
      if (poll_exit()) return true;
      pump(std::chrono::milliseconds(10));
    }
    return poll_exit();
  }

  // Reads everything and waits for the end; after `timeout` the child is killed and timed_out is set.
  ChildExit wait(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    ChildExit r;
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!poll_exit()) {
      if (std::chrono::steady_clock::now() >= end) {
        kill(pid_, SIGKILL);
        r.timed_out = true;
        waitpid(pid_, &status_, 0);
        reaped_ = true;
        break;
      }
      pump(std::chrono::milliseconds(20));
    }
    // What is left in the pipes (a grandchild holding them open would make this stop at the time limit).
    while (std::chrono::steady_clock::now() < end && pump(std::chrono::milliseconds(20))) {
    }
    r.exited = !r.timed_out && WIFEXITED(status_);
    r.code = r.exited ? WEXITSTATUS(status_) : -1;
    r.signal = WIFSIGNALED(status_) ? WTERMSIG(status_) : 0;
    r.out = out_;
    r.err = err_;
    return r;
  }

 private:
  bool poll_exit() {
    if (reaped_) return true;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) reaped_ = true;
    return reaped_;
  }

  // Waits up to `period` for output and reads what is there; false once both pipes are closed.
  bool pump(std::chrono::milliseconds period) {
    pollfd fds[2] = {{drain_stdout_ ? out_fd_ : -1, POLLIN, 0}, {err_fd_, POLLIN, 0}};
    if (fds[0].fd < 0 && fds[1].fd < 0) {
      std::this_thread::sleep_for(period);
      return false;
    }
    if (::poll(fds, 2, static_cast<int>(period.count())) <= 0) return true;
    for (int i = 0; i < 2; ++i) {
      int& fd = i == 0 ? out_fd_ : err_fd_;
      if (fd < 0 || fds[i].revents == 0) continue;
      char buf[65536];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? out_ : err_).append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fd);
        fd = -1;
      }
    }
    return (drain_stdout_ && out_fd_ >= 0) || err_fd_ >= 0;
  }

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  bool drain_stdout_ = true;
  std::string out_, err_;
};

}  // namespace tessera::test
