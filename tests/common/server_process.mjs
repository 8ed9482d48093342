// What the Node tests of tests/server and tests/web share: starting a server process that prints
// `listening on http://127.0.0.1:PORT` when ready, and reading its Prometheus /metrics. No npm packages here, so
// either suite can import it with its own node_modules.
import { spawn } from 'node:child_process';

const readyLine = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/m;

// Servers still running when the test process exits (a test that timed out, say) go with it.
const runningServers = new Set();
process.on('exit', () => {
  for (const child of runningServers) child.kill('SIGKILL');
});

// Starts `command args` and waits (at most 30 s) for its "listening on" line. Returns { url, child, exited,
// stderr(), stop() }: stop() sends SIGTERM, then SIGKILL after `killAfterMs`, and resolves to the exit
// { code, signal }. Its output keeps being read, so that a server that logs never blocks on a full pipe.
export async function spawnServer(command, args, { killAfterMs = 10_000 } = {}) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  runningServers.add(child);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      runningServers.delete(child);
      resolve({ code, signal });
    });
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (data) => { stderr = (stderr + data).slice(-8192); });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('no "listening on" line within 30 s')), 30_000);
    function fail(error) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')}: ${error.message}\nstdout: ${stdout}\nstderr: ${stderr}`));
    }
    const exitedEarly = (code, signal) => fail(new Error(`exited (${code ?? signal}) before listening`));
    child.on('error', fail);
    child.on('exit', exitedEarly);
    child.stdout.on('data', (data) => {
      stdout += data;
      const match = readyLine.exec(stdout);
      if (match) {
        clearTimeout(timer);
        child.off('exit', exitedEarly);
        child.stdout.removeAllListeners('data');
        child.stdout.resume();
        resolve(match[1]);
      }
    });
  });
  return {
    url,
    child,
    exited,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

// The server's Prometheus text as { series: value }, labels included in the series name as written.
export async function readMetrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const values = {};
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (match) values[match[1]] = Number(match[2]);
  }
  return values;
}
