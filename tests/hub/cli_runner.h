// Runs the tessera binary with its own environment (a store of its own, the mock Hub as HF_ENDPOINT) and,
// for the disk-full test, a file size limit. Started with fork/exec so that a test can also signal it.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "common/run_tessera.h"
#include "hub/mock_hub.h"

namespace tessera::test {

class Cli {
 public:
  using Env = std::map<std::string, std::string>;

  // A started run; wait() collects its exit code and output.
  struct Running {
    pid_t pid = -1;
    std::filesystem::path out, err;
    CommandResult wait() {
      int status = 0;
      waitpid(pid, &status, 0);
      CommandResult r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(out), read_bytes(err)};
      std::filesystem::remove(out);
      std::filesystem::remove(err);
      return r;
    }
  };

  // `env` is the whole environment besides PATH and HOME; `file_size_limit` > 0 sets RLIMIT_FSIZE with SIGXFSZ
  // ignored, so writes past it fail with EFBIG as on a full disk.
  static Running start(const std::vector<std::string>& args, const Env& env, rlim_t file_size_limit = 0) {
    static std::atomic<int> counter{0};
    const std::filesystem::path dir = std::filesystem::temp_directory_path();
    const std::string tag = std::to_string(getpid()) + "-hub-" + std::to_string(counter++);
    Running run{-1, dir / ("tessera-out-" + tag), dir / ("tessera-err-" + tag)};
    std::vector<std::string> argv_text = {tessera_binary()};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<std::string> env_text = {"PATH=/usr/bin:/bin", "HOME=" + dir.string()};
    for (const auto& [k, v] : env) env_text.push_back(k + "=" + v);
    std::vector<char*> argv, envp;
    for (std::string& s : argv_text) argv.push_back(s.data());
    for (std::string& s : env_text) envp.push_back(s.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    run.pid = fork();
    if (run.pid == 0) {
      // Only async-signal-safe calls between fork and exec: the mock Hub's threads may hold locks.
      const int out = open(run.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      const int err = open(run.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (out < 0 || err < 0 || dup2(out, STDOUT_FILENO) < 0 || dup2(err, STDERR_FILENO) < 0) _exit(127);
      if (file_size_limit > 0) {
        signal(SIGXFSZ, SIG_IGN);
        const rlimit limit{file_size_limit, file_size_limit};
        setrlimit(RLIMIT_FSIZE, &limit);
      }
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    return run;
  }

  static CommandResult run(const std::vector<std::string>& args, const Env& env, rlim_t file_size_limit = 0) {
    return start(args, env, file_size_limit).wait();
  }
};

}  // namespace tessera::test
