package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// child is a process started by the benchmark. Every child is killed when
// the benchmark returns (killAll), and on Linux also by the kernel if the
// benchmark dies (Pdeathsig).
type child struct {
	name string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
}

// children tracks every running child so that one deferred call ends them.
type children struct {
	mu   sync.Mutex
	list []*child
}

func (cs *children) start(name string, cmd *exec.Cmd) (*child, error) {
	c := &child{name: name, cmd: cmd, logs: new(syncBuffer), done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = c.logs
	}
	cmd.Stderr = c.logs
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() { _ = cmd.Wait(); close(c.done) }()
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
	return c, nil
}

// killAll kills every child and waits (bounded) for each to exit.
func (cs *children) killAll() {
	cs.mu.Lock()
	list := cs.list
	cs.list = nil
	cs.mu.Unlock()
	for _, c := range list {
		_ = c.cmd.Process.Kill()
	}
	for _, c := range list {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
	}
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// tail returns the last n bytes of the child's output, for error messages.
func (c *child) tail(n int) string {
	s := c.logs.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// upstream is a running upstream process and what it reported.
type upstream struct {
	kind  string // kindHTTP or kindHTTPS
	proto string // what the HTTPS upstream offers: protoH1, protoH2 or protoBoth
	addr  string
	proc  *child
	// Connections accepted so far, from the upstream's "conn" lines.
	h1, h2, resumed atomic.Int64
}

// baseURL is the upstream's URL for the proxies' configurations.
func (u *upstream) baseURL() string { return u.kind + "://" + u.addr }

// connCounts is how many upstream connections were opened, by protocol,
// and how many of them resumed a TLS session.
type connCounts struct {
	H1      int64 `json:"h1"`
	H2      int64 `json:"h2"`
	Resumed int64 `json:"tlsResumed"`
}

func (u *upstream) conns() connCounts {
	return connCounts{H1: u.h1.Load(), H2: u.h2.Load(), Resumed: u.resumed.Load()}
}

func (c connCounts) sub(o connCounts) connCounts {
	return connCounts{H1: c.H1 - o.H1, H2: c.H2 - o.H2, Resumed: c.Resumed - o.Resumed}
}

func (c connCounts) add(o connCounts) connCounts {
	return connCounts{H1: c.H1 + o.H1, H2: c.H2 + o.H2, Resumed: c.Resumed + o.Resumed}
}

// count records one "conn <proto> <resumed>" line of the upstream.
func (u *upstream) count(line string) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "conn" {
		return
	}
	switch f[1] {
	case protoH1:
		u.h1.Add(1)
	case protoH2:
		u.h2.Add(1)
	}
	if f[2] == "true" {
		u.resumed.Add(1)
	}
}

// startUpstream re-executes this binary as an upstream of the given kind
// (proto: what an HTTPS upstream offers; delay: how long it waits before
// each answer; env: more of its environment) and returns it once it
// reported its address.
func startUpstream(ctx context.Context, cs *children, kind, proto string, delay time.Duration, env ...string) (*upstream, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roleEnv+"=upstream", upstreamKindEnv+"="+kind, upstreamProtoEnv+"="+proto,
		upstreamDelayEnv+"="+delay.String())
	cmd.Env = append(cmd.Env, env...)
	stdin, err := cmd.StdinPipe() // closed when we exit: the upstream follows
	if err != nil {
		return nil, err
	}
	_ = stdin // kept open for the lifetime of the process
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c, err := cs.start("upstream-"+kind, cmd)
	if err != nil {
		return nil, err
	}
	u := &upstream{kind: kind, proto: proto, proc: c}
	first := make(chan string, 1)
	go func() {
		// The first line is the address; every later one a connection.
		// Reading until EOF also keeps the upstream from blocking on a
		// full pipe.
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		for sc.Scan() {
			u.count(sc.Text())
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line, ok := <-first:
		addr, found := strings.CutPrefix(line, "listening ")
		if !ok || !found {
			return nil, fmt.Errorf("%s upstream did not start: %q %s", kind, line, c.tail(2000))
		}
		u.addr = addr
		return u, nil
	case <-time.After(15 * time.Second):
		return nil, fmt.Errorf("%s upstream did not report its address within 15s", kind)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// startCaddy runs `bin run` on caddyfile in its own directory and waits
// until the site port accepts connections.
func startCaddy(ctx context.Context, cs *children, name, bin, dir, caddyfile string, port int, env []string) (*child, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"HOME="+dir,
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	cmd.Env = append(cmd.Env, env...)
	c, err := cs.start(name, cmd)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c.exited() {
			return nil, fmt.Errorf("%s exited during startup:\n%s", name, c.tail(4000))
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%s did not listen on %s within 60s:\n%s", name, addr, c.tail(4000))
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// buildGateway builds ./cmd/byteproxy of the enclosing module into dir.
func buildGateway(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the byteproxy module: run from the repository or pass -bin")
	}
	bin := filepath.Join(dir, "byteproxy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/byteproxy")
	cmd.Dir = filepath.Dir(mod)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/byteproxy: %w\n%s", err, b)
	}
	return bin, nil
}

// cpuTimes is a process's user and system CPU time.
type cpuTimes struct {
	User, System time.Duration
}

func (t cpuTimes) total() time.Duration { return t.User + t.System }

// clockTick is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// readCPU reads the CPU time of every thread of process pid so far.
func readCPU(pid int) (cpuTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}, err
	}
	return parseProcStat(string(b))
}

// parseProcStat extracts utime and stime (fields 14 and 15) from the
// contents of /proc/<pid>/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted after its last ')'.
func parseProcStat(s string) (cpuTimes, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return cpuTimes{}, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return cpuTimes{}, errors.New("malformed /proc stat: too few fields")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return cpuTimes{}, errors.New("malformed /proc stat: utime/stime")
	}
	return cpuTimes{User: time.Duration(ut) * clockTick, System: time.Duration(st) * clockTick}, nil
}

// cpuPerRequest is the CPU time spent between two readings divided by the
// number of requests served in between; zero when unknown.
func cpuPerRequest(before, after cpuTimes, requests int64) time.Duration {
	return perRequest(after.total()-before.total(), requests)
}

// perRequest is d divided by requests; zero when either is not positive.
func perRequest(d time.Duration, requests int64) time.Duration {
	if requests <= 0 || d < 0 {
		return 0
	}
	return d / time.Duration(requests)
}

// loadAvg returns the 1-minute load average, or -1 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// syncBuffer is a bytes.Buffer safe for concurrent writers, bounded to its
// last 1 MiB so that a chatty child cannot exhaust memory.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

const maxLog = 1 << 20

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len()+len(p) > maxLog {
		keep := s.b.Bytes()
		if len(keep) > maxLog/2 {
			keep = keep[len(keep)-maxLog/2:]
		}
		nb := append([]byte(nil), keep...)
		s.b.Reset()
		s.b.Write(nb)
	}
	if len(p) > maxLog/2 {
		s.b.Write(p[len(p)-maxLog/2:])
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// otherLoad lists other load generators and benchmarks running on this
// machine (wrk, byteproxy-bench), whose CPU use would distort the figures.
// Linux only; empty elsewhere.
func otherLoad() []string {
	dirs, _ := os.ReadDir("/proc")
	var found []string
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
		if err != nil {
			continue
		}
		comm := strings.TrimSpace(string(b))
		if comm == "wrk" || strings.HasPrefix(comm, "byteproxy-bench") {
			found = append(found, fmt.Sprintf("%s[%d]", comm, pid))
		}
	}
	return found
}

// cpuStat is the machine's total and idle CPU time from /proc/stat, in
// clock ticks.
type cpuStat struct{ total, idle int64 }

func readMachineCPU() (cpuStat, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}, err
	}
	return parseMachineStat(string(b))
}

// parseMachineStat reads the aggregate "cpu" line: user nice system idle
// iowait irq softirq steal ...; idle and iowait count as idle.
func parseMachineStat(s string) (cpuStat, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuStat{}, errors.New("malformed /proc/stat")
	}
	var st cpuStat
	for i, v := range f[1:] {
		if i >= 8 { // guest time is already counted in user
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return cpuStat{}, errors.New("malformed /proc/stat")
		}
		st.total += n
		if i == 3 || i == 4 {
			st.idle += n
		}
	}
	return st, nil
}

// busyFraction is the share of the machine's CPU time that was not idle
// between two readings; -1 when unknown.
func busyFraction(before, after cpuStat) float64 {
	dt := after.total - before.total
	if dt <= 0 {
		return -1
	}
	return 1 - float64(after.idle-before.idle)/float64(dt)
}
