/*
 * ovm-agent: openshell-vm's in-guest agent (static, no libraries beyond libc).
 *
 * The host talks to it over one byte stream, one of:
 *   (no argument)   the virtio-serial port named org.openshell.agent (QEMU);
 *   DEVICE          a character device;
 *   --vsock PORT    a vsock connection to the host (CID 2) on PORT: libkrun maps the port to a Unix
 *                   socket the host listens on; the agent connects again whenever it is lost;
 *   --unix PATH     the same through a Unix socket (tests run the agent on the host with it);
 *   --stdio         its own stdin/stdout (tests).
 * Who ends the guest:
 *   (default)       the guest init (PID 1, ovm-init) keeps the agent running; SHUTDOWN sends PID 1
 *                   SIGTERM, whose trap stops the guest in order.
 *   --workload      the agent is the VM's workload (libkrun: its init forks the one command it
 *                   runs, the agent, and ends the VM with that command's status when it exits).
 *                   It starts from a clean environment (PATH, HOME, TERM only). SHUTDOWN, or
 *                   SIGTERM to the agent, stops its sessions' commands in order (SIGTERM to each
 *                   session's process group, SIGKILL to what still runs after STOP_GRACE_MS; their
 *                   EXIT frames are sent), syncs, and the agent exits 0: the VM ends.
 *
 * Everything on the stream is a frame:
 *
 *   u32 length (big-endian, of what follows)   u8 type   u32 channel (big-endian)   payload
 *
 * Channel 0 is the agent itself (hello, ping, clock, entropy, shutdown); every other channel is
 * one command session the host opened. The agent runs many sessions at once, each in its own session
 * and process group, on pipes or on a pseudo-terminal.
 *
 * Host to guest: OPEN (start a command), STDIN (bytes; empty = end of input), RESIZE (u16 rows,
 * u16 cols), SIGNAL (a name: INT, TERM, HUP, QUIT, KILL), CLOSE (the host side went away: kill
 * the session), PING, TIME_GET, TIME_SET ("SEC.NSEC"), SHUTDOWN (stop the guest in order: see
 * above), HELLO_GET (say HELLO again: a guest restored from a snapshot resumes with its agent
 * mid-loop, and the host's new link has not heard it), ENTROPY (32 to 512 bytes of the host's
 * randomness: added to the kernel's pool, credited in full, then the kernel's CRNG is reseeded, so
 * that two VMs restored from one snapshot do not go on with the same random state).
 * Guest to host: HELLO ("ovm-agent/1 ARCH", sent at start and on HELLO_GET, on channel 0), STDOUT,
 * STDERR, EXIT (i32 code: the exit status, 128+N for signal N, 127 not found, 126 not executable,
 * 125 the agent failed), PONG, TIME ("SEC.NSEC" of CLOCK_REALTIME), ENTROPY_DONE (on ENTROPY's
 * channel: "ok"; "ok; not reseeded at once: ..." when the kernel is older than RNDRESEEDCRNG
 * (4.17: the bytes are in the pool, used at its next reseed); "error: ..." when nothing was added).
 * PING, TIME_GET, TIME_SET and ENTROPY are answered on the channel they came on.
 *
 * OPEN's payload is NUL-terminated strings: "t" or "-" (terminal), rows, cols, workdir, argc,
 * argv..., envc, env... (NAME=VALUE entries added to, or replacing, the agent's environment).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/vm_sockets.h> /* after sys/socket.h, which it needs */
#include <sys/wait.h>
#include <linux/random.h>
#include <termios.h>
#include <ucontext.h>
#include <time.h>
#include <unistd.h>

enum {
  F_OPEN = 1, F_STDIN = 2, F_RESIZE = 3, F_SIGNAL = 4, F_STDOUT = 5, F_STDERR = 6, F_EXIT = 7,
  F_CLOSE = 8, F_TIME_GET = 9, F_TIME = 10, F_TIME_SET = 11, F_SHUTDOWN = 12, F_HELLO = 13,
  F_PING = 14, F_PONG = 15,
  /* 16 and 17 are the host's own (the supervisor's ERROR and STOP): never on this stream. */
  F_HELLO_GET = 18, F_ENTROPY = 19, F_ENTROPY_DONE = 20,
};

/* ENTROPY's payload size range (bytes). */
#define ENTROPY_MIN 32
#define ENTROPY_MAX 512
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07) /* Linux 4.17; older libc headers lack it */
#endif

#define PORT_NAME "org.openshell.agent"
#define MAX_FRAME (1u << 20)
#define MAX_SESSIONS 64
#define CHUNK 16384
/* After a command exits: how long to wait for the rest of its output (a background child may
 * keep the pipes open). */
#define DRAIN_MS 300
/* --workload: how long the sessions' commands get after SIGTERM before SIGKILL (well inside the
 * 10 s the host gives the guest to end after SHUTDOWN). */
#define STOP_GRACE_MS 3000
/* ...and how long the agent then waits for them to be reaped before it exits anyway. */
#define REAP_MS 1000

#ifndef OVM_ARCH
#if defined(__x86_64__)
#define OVM_ARCH "x86_64"
#elif defined(__aarch64__)
#define OVM_ARCH "aarch64"
#else
#define OVM_ARCH "unknown"
#endif
#endif

extern char **environ;

struct session {
  uint32_t ch;
  pid_t pid;
  int tty;
  int in_fd;  /* stdin pipe (write end) or the pty master; -1 once closed */
  int out_fd; /* stdout pipe (read end) or the pty master */
  int err_fd; /* stderr pipe (read end); -1 with a terminal */
  char *pending; /* stdin bytes not written yet */
  size_t pending_len;
  int in_eof;    /* close stdin once pending is written */
  int exited;
  int code;
  long long drain_until; /* ms; set when the process has exited */
};

static struct session *sessions[MAX_SESSIONS];
static int port = -1;     /* read from */
static int port_out = -1; /* written to (the same fd, except with --stdio) */
/* Connected channels (--vsock, --unix) are dialled again when lost. */
static enum { CH_PORT, CH_STDIO, CH_VSOCK, CH_UNIX } channel = CH_PORT;
static const char *channel_arg;
static int workload; /* --workload: SHUTDOWN ends the agent itself, not PID 1 */
static long long stop_deadline; /* ms; set once the agent is stopping (--workload) */
static int stop_killed;         /* SIGKILL sent to what outlived the grace period */
static unsigned char *rbuf;
static size_t rlen;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logmsg(const char *fmt, const char *arg) {
  fprintf(stderr, "ovm-agent: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
}

static int write_all(int fd, const void *buf, size_t len) {
  const unsigned char *p = buf;
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd w = {.fd = fd, .events = POLLOUT};
        poll(&w, 1, 1000);
        continue;
      }
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void host_gone(const char *why);
static void drop_sessions(void);
static void workload_exit(const char *why);

static void send_frame(int type, uint32_t ch, const void *data, size_t len) {
  unsigned char head[9];
  put32(head, (uint32_t)(len + 5));
  head[4] = (unsigned char)type;
  put32(head + 5, ch);
  if (port_out < 0) return;
  if (write_all(port_out, head, sizeof head) < 0 || (len && write_all(port_out, data, len) < 0)) {
    int e = errno;
    logmsg("write to the host failed: %s", strerror(e));
    /* --stdio: nobody reads any more (EPIPE): the agent ends, as when its input closes. */
    if (channel == CH_STDIO && e == EPIPE) host_gone(NULL);
  }
}

static void send_text(int type, uint32_t ch, const char *text) { send_frame(type, ch, text, strlen(text)); }

static void send_time(uint32_t ch) {
  struct timespec ts;
  char text[64];
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(text, sizeof text, "%lld.%09ld", (long long)ts.tv_sec, ts.tv_nsec);
  send_text(F_TIME, ch, text);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static struct session *find_session(uint32_t ch) {
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i] && sessions[i]->ch == ch) return sessions[i];
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void free_session(struct session *s) {
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i] == s) sessions[i] = NULL;
  if (s->tty) {
    /* in_fd and out_fd are the same master */
    if (s->out_fd >= 0) close(s->out_fd);
  } else {
    close_fd(&s->in_fd);
    close_fd(&s->out_fd);
    close_fd(&s->err_fd);
  }
  free(s->pending);
  free(s);
}

static void finish_session(struct session *s) {
  unsigned char code[4];
  put32(code, (uint32_t)s->code);
  send_frame(F_EXIT, s->ch, code, 4);
  free_session(s);
}

/* One failed start: a message on the session's stderr, then its exit code. */
static void refuse(uint32_t ch, int code, const char *what, const char *detail) {
  char text[512];
  unsigned char c[4];
  snprintf(text, sizeof text, "ovm-agent: %s: %s\n", what, detail);
  send_text(F_STDERR, ch, text);
  put32(c, (uint32_t)code);
  send_frame(F_EXIT, ch, c, 4);
}

/* Splits OPEN's payload into its NUL-terminated fields; returns how many, -1 if malformed. */
static int split_fields(char *p, size_t len, char **out, int max) {
  int n = 0;
  size_t i = 0;
  while (i < len) {
    if (n == max) return -1;
    out[n++] = p + i;
    char *end = memchr(p + i, 0, len - i);
    if (!end) return -1;
    i = (size_t)(end - p) + 1;
  }
  return n;
}

static char **merged_env(char **extra, int n) {
  int base = 0;
  while (environ[base]) base++;
  char **env = calloc((size_t)(base + n + 1), sizeof *env);
  if (!env) return NULL;
  int k = 0;
  for (int i = 0; i < base; i++) {
    size_t key = strcspn(environ[i], "=");
    int replaced = 0;
    for (int j = 0; j < n; j++)
      if (strncmp(extra[j], environ[i], key) == 0 && extra[j][key] == '=') replaced = 1;
    if (!replaced) env[k++] = environ[i];
  }
  for (int j = 0; j < n; j++) env[k++] = extra[j];
  env[k] = NULL;
  return env;
}

/* A count or size from the host: decimal digits only, at most `max`; -1 otherwise (no overflow:
 * the value is bounded before it is used in any arithmetic). */
static long parse_bounded(const char *text, long max) {
  long v = 0;
  if (!text[0]) return -1;
  for (const char *c = text; *c; c++) {
    if (*c < '0' || *c > '9') return -1;
    v = v * 10 + (*c - '0');
    if (v > max) return -1;
  }
  return v;
}

#define MAX_FIELDS 4096

static void open_session(uint32_t ch, char *payload, size_t len) {
  char *f[MAX_FIELDS + 1];
  int n = split_fields(payload, len, f, MAX_FIELDS);
  if (find_session(ch)) return;
  if (stop_deadline) return refuse(ch, 125, "the guest is stopping", "no new commands");
  if (n < 6) return refuse(ch, 125, "bad request", "malformed OPEN");
  if ((f[0][0] != 't' && f[0][0] != '-') || f[0][1]) return refuse(ch, 125, "bad request", "bad terminal flag");
  int tty = f[0][0] == 't';
  long rows = parse_bounded(f[1], 0xffff), cols = parse_bounded(f[2], 0xffff);
  if (rows < 0 || cols < 0) return refuse(ch, 125, "bad request", "bad terminal size");
  const char *workdir = f[3];
  /* Fields: flag, rows, cols, workdir, argc, argv[argc], envc, env[envc]: so argc <= n - 6. */
  long argc = parse_bounded(f[4], n - 6);
  if (argc < 1) return refuse(ch, 125, "bad request", "no command (or a bad argument count)");
  char **argv = &f[5];
  long envc = parse_bounded(f[5 + argc], n - 6 - argc);
  if (envc < 0 || 6 + argc + envc != n) return refuse(ch, 125, "bad request", "bad environment count");
  char **extra = &f[6 + argc];
  f[5 + argc] = NULL; /* argv ends here (the slot held envc) */

  int slot = -1;
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (!sessions[i]) { slot = i; break; }
  if (slot < 0) return refuse(ch, 125, "too many sessions", "at most 64 at once");

  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, status[2];
  int master = -1;
  char *slave_name = NULL;
  if (tty) {
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || !(slave_name = ptsname(master))) {
      if (master >= 0) close(master);
      return refuse(ch, 125, "cannot open a pseudo-terminal", strerror(errno));
    }
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
    if (rows > 0 && cols > 0) ioctl(master, TIOCSWINSZ, &ws);
  } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    return refuse(ch, 125, "cannot make pipes", strerror(errno));
  }
  if (pipe2(status, O_CLOEXEC) < 0) return refuse(ch, 125, "cannot make a pipe", strerror(errno));
  char **env = merged_env(extra, (int)envc);

  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    if (tty) {
      int slave = open(slave_name, O_RDWR);
      if (slave < 0) goto failed;
      ioctl(slave, TIOCSCTTY, 0);
      dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
      if (slave > 2) close(slave);
    } else {
      dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
    }
    if (workdir[0] && chdir(workdir) < 0) {
      int e = -errno; /* negative: the working directory, not the command */
      write(status[1], &e, sizeof e);
      _exit(125);
    }
    if (env) environ = env;
    execvp(argv[0], argv);
  failed:;
    int e = errno;
    write(status[1], &e, sizeof e);
    _exit(e == ENOENT ? 127 : 126);
  }
  free(env);
  close(status[1]);
  if (pid < 0) {
    int e = errno;
    close(status[0]);
    if (tty) close(master);
    else { close(in[0]); close(in[1]); close(out[0]); close(out[1]); close(err[0]); close(err[1]); }
    return refuse(ch, 125, "fork failed", strerror(e));
  }
  if (!tty) { close(in[0]); close(out[1]); close(err[1]); }

  /* The status pipe closes on exec (success) or carries errno (failure). */
  int e = 0;
  ssize_t got;
  do got = read(status[0], &e, sizeof e); while (got < 0 && errno == EINTR);
  close(status[0]);
  if (got == (ssize_t)sizeof e) {
    waitpid(pid, NULL, 0);
    if (tty) close(master);
    else { close(in[1]); close(out[0]); close(err[0]); }
    char what[300];
    if (e < 0) {
      snprintf(what, sizeof what, "cannot change to directory '%s'", workdir);
      return refuse(ch, 125, what, strerror(-e));
    }
    snprintf(what, sizeof what, "cannot run '%s'", argv[0]);
    return refuse(ch, e == ENOENT ? 127 : 126, what, strerror(e));
  }

  struct session *s = calloc(1, sizeof *s);
  s->ch = ch;
  s->pid = pid;
  s->tty = tty;
  s->in_fd = tty ? master : in[1];
  s->out_fd = tty ? master : out[0];
  s->err_fd = tty ? -1 : err[0];
  set_nonblock(s->out_fd);
  if (!tty) { set_nonblock(s->in_fd); set_nonblock(s->err_fd); }
  sessions[slot] = s;
}

static void flush_stdin(struct session *s) {
  while (s->pending_len && s->in_fd >= 0) {
    ssize_t n = write(s->in_fd, s->pending, s->pending_len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      s->pending_len = 0; /* the command closed its stdin: drop the rest */
      break;
    }
    memmove(s->pending, s->pending + n, s->pending_len - (size_t)n);
    s->pending_len -= (size_t)n;
  }
  if (!s->pending_len && s->in_eof && s->in_fd >= 0) {
    if (s->tty) {
      /* A terminal has no end of input: send the EOF character (^D) instead. */
      char eof = 4;
      write(s->in_fd, &eof, 1);
      s->in_eof = 0;
    } else {
      close_fd(&s->in_fd);
    }
  }
}

static int signal_number(const char *name) {
  static const struct { const char *name; int sig; } table[] = {
    {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"WINCH", SIGWINCH},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(name, table[i].name) == 0) return table[i].sig;
  return 0;
}

/* --workload: the guest stops. Every session's command gets SIGTERM; the main loop sends SIGKILL
 * after STOP_GRACE_MS and exits once no session is left. */
static void begin_stop(void) {
  if (stop_deadline) return;
  stop_deadline = now_ms() + STOP_GRACE_MS;
  for (int i = 0; i < MAX_SESSIONS; i++)
    if (sessions[i] && !sessions[i]->exited) kill(-sessions[i]->pid, SIGTERM);
}

/* --workload, while stopping: SIGKILL after the grace period; sync and exit 0 when no session is
 * left (or REAP_MS after the SIGKILL). Returns the poll timeout (ms) until the next step. */
static int stop_step(void) {
  long long now = now_ms();
  int left = 0;
  for (int i = 0; i < MAX_SESSIONS; i++) left += sessions[i] != NULL;
  if (!left) workload_exit("stopped");
  if (stop_killed && now >= stop_deadline + REAP_MS) workload_exit("stopped (a command outlived SIGKILL)");
  if (now >= stop_deadline && !stop_killed) {
    stop_killed = 1;
    for (int i = 0; i < MAX_SESSIONS; i++)
      if (sessions[i] && !sessions[i]->exited) kill(-sessions[i]->pid, SIGKILL);
    return REAP_MS;
  }
  return (int)(stop_deadline + (stop_killed ? REAP_MS : 0) - now);
}

static void hello(void);

/* ENTROPY: the host's random bytes into the kernel's pool (RNDADDENTROPY: mixed in and credited,
 * bytes * 8 bits), then a reseed of the CRNG from it now (RNDRESEEDCRNG), not minutes later. The
 * bytes are wiped from the agent's memory afterwards. Answers ENTROPY_DONE on `ch`. */
static void add_entropy(uint32_t ch, unsigned char *p, size_t len) {
  char reply[200];
  if (len < ENTROPY_MIN || len > ENTROPY_MAX) {
    snprintf(reply, sizeof reply, "error: %s: %zu bytes of entropy (%d to %d expected)", strerror(EINVAL),
             len, ENTROPY_MIN, ENTROPY_MAX);
    explicit_bzero(p, len);
    send_text(F_ENTROPY_DONE, ch, reply);
    return;
  }
  union {
    struct rand_pool_info info;
    unsigned char raw[sizeof(struct rand_pool_info) + ENTROPY_MAX];
  } req;
  req.info.entropy_count = (int)len * 8;
  req.info.buf_size = (int)len;
  memcpy(req.info.buf, p, len);
  explicit_bzero(p, len);
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(reply, sizeof reply, "error: /dev/urandom: %s", strerror(errno));
  } else if (ioctl(fd, RNDADDENTROPY, &req) < 0) {
    snprintf(reply, sizeof reply, "error: RNDADDENTROPY: %s", strerror(errno));
  } else if (ioctl(fd, RNDRESEEDCRNG) < 0) {
    int e = errno;
    if (e == EINVAL || e == ENOTTY)
      snprintf(reply, sizeof reply, "ok; not reseeded at once: RNDRESEEDCRNG: %s", strerror(e));
    else
      snprintf(reply, sizeof reply, "error: RNDRESEEDCRNG: %s", strerror(e));
  } else {
    snprintf(reply, sizeof reply, "ok");
  }
  explicit_bzero(&req, sizeof req);
  if (fd >= 0) close(fd);
  send_text(F_ENTROPY_DONE, ch, reply);
}

static void handle_frame(int type, uint32_t ch, unsigned char *p, size_t len) {
  struct session *s = ch ? find_session(ch) : NULL;
  char text[64];
  switch (type) {
  case F_OPEN:
    if (ch) open_session(ch, (char *)p, len);
    break;
  case F_STDIN:
    if (!s || s->in_fd < 0) break;
    if (!len) {
      s->in_eof = 1;
    } else {
      char *grown = realloc(s->pending, s->pending_len + len);
      if (!grown) break;
      s->pending = grown;
      memcpy(s->pending + s->pending_len, p, len);
      s->pending_len += len;
    }
    flush_stdin(s);
    break;
  case F_RESIZE:
    if (s && s->tty && len >= 4) {
      struct winsize ws = {.ws_row = (unsigned short)(p[0] << 8 | p[1]), .ws_col = (unsigned short)(p[2] << 8 | p[3])};
      ioctl(s->in_fd, TIOCSWINSZ, &ws);
    }
    break;
  case F_SIGNAL:
    if (s && !s->exited && len < sizeof text) {
      memcpy(text, p, len);
      text[len] = 0;
      int sig = signal_number(text);
      if (sig) kill(-s->pid, sig);
    }
    break;
  case F_CLOSE:
    if (s) {
      if (!s->exited) kill(-s->pid, SIGKILL);
      /* reaped later by SIGCHLD; the session is gone for the host already */
      s->exited = 1;
      s->drain_until = 0;
      free_session(s);
    }
    break;
  case F_PING:
    send_frame(F_PONG, ch, p, len);
    break;
  case F_TIME_GET:
    send_time(ch);
    break;
  case F_TIME_SET:
    if (len < sizeof text) {
      memcpy(text, p, len);
      text[len] = 0;
      char *dot;
      struct timespec ts = {.tv_sec = strtoll(text, &dot, 10), .tv_nsec = 0};
      if (*dot == '.') ts.tv_nsec = strtol(dot + 1, NULL, 10);
      if (clock_settime(CLOCK_REALTIME, &ts) < 0) logmsg("cannot set the clock: %s", strerror(errno));
    }
    send_time(ch);
    break;
  case F_HELLO_GET:
    hello();
    break;
  case F_ENTROPY:
    add_entropy(ch, p, len);
    break;
  case F_SHUTDOWN:
    logmsg("%s", "shutdown requested by the host");
    if (workload) begin_stop();
    else kill(1, SIGTERM);
    break;
  }
}

/* The host is gone: its sessions' commands are killed (nobody reads them any more). */
static void drop_sessions(void) {
  for (int i = 0; i < MAX_SESSIONS; i++) {
    struct session *s = sessions[i];
    if (!s) continue;
    if (!s->exited) kill(-s->pid, SIGKILL);
    free_session(s);
  }
  free(rbuf);
  rbuf = NULL;
  rlen = 0;
}

/* --stdio: the host is gone, so is the agent (its sessions' commands with it). */
static void host_gone(const char *why) {
  if (why) logmsg("%s", why);
  drop_sessions();
  exit(0);
}

static int dial(void) {
  int fd = -1;
  if (channel == CH_VSOCK) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST,
                            .svm_port = (unsigned)strtoul(channel_arg, NULL, 10)};
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
  } else {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", channel_arg);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
  }
  if (fd >= 0) close(fd);
  return -1;
}

static void hello(void) { send_text(F_HELLO, 0, "ovm-agent/1 " OVM_ARCH); }

/* --workload: whether a SIGTERM waits (blocked, for the signalfd). */
static int term_pending(void) {
  sigset_t pending;
  return workload && sigpending(&pending) == 0 && sigismember(&pending, SIGTERM);
}

/* --workload: the agent's own end (the VM's, under libkrun). */
static void workload_exit(const char *why) {
  logmsg("%s", why);
  drop_sessions();
  sync();
  exit(0);
}

/* Drops the lost connection and dials until the host answers (every 0.1 s, then every 1 s). */
static void redial(void) {
  if (port >= 0) {
    /* Stopping: nobody is left to report the sessions to. */
    if (stop_deadline) workload_exit("the host went away while stopping");
    logmsg("%s", "the host went away; dialling again");
    drop_sessions();
    close(port);
  }
  port = port_out = -1;
  for (int tries = 0; (port = dial()) < 0; tries++) {
    if (term_pending()) workload_exit("SIGTERM while dialling the host: stopping");
    usleep(tries < 50 ? 100000 : 1000000);
  }
  port_out = port;
  hello();
}

static void read_port(void) {
  unsigned char buf[CHUNK];
  ssize_t n = read(port, buf, sizeof buf);
  if (n <= 0) {
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    /* --stdio: the host is gone, so is the agent. A connection: dial again. A port: the host side
     * is not connected (yet, or any more): wait for it. */
    if (channel == CH_STDIO) host_gone(NULL);
    if (channel == CH_VSOCK || channel == CH_UNIX) {
      redial();
      return;
    }
    usleep(200000);
    return;
  }
  unsigned char *grown = realloc(rbuf, rlen + (size_t)n);
  if (!grown) return;
  rbuf = grown;
  memcpy(rbuf + rlen, buf, (size_t)n);
  rlen += (size_t)n;
  size_t off = 0;
  while (rlen - off >= 4) {
    uint32_t flen = get32(rbuf + off);
    if (flen < 5 || flen > MAX_FRAME) {
      /* No way to find the next frame: a stream is dropped (--stdio: the agent ends; a connection
       * is dialled again), a port's buffer is reset. */
      logmsg("%s", "bad frame length from the host");
      if (channel == CH_STDIO) {
        drop_sessions();
        exit(1);
      }
      if (channel == CH_VSOCK || channel == CH_UNIX) {
        redial();
        return;
      }
      off = rlen;
      break;
    }
    if (rlen - off < 4 + flen) break;
    handle_frame(rbuf[off + 4], get32(rbuf + off + 5), rbuf + off + 9, flen - 5);
    off += 4 + flen;
  }
  memmove(rbuf, rbuf + off, rlen - off);
  rlen -= off;
}

/* Forwards what a command wrote; returns 0 at end of file (or EIO on a terminal). */
static int pump(struct session *s, int fd, int type) {
  unsigned char buf[CHUNK];
  for (int rounds = 0; rounds < 8; rounds++) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      send_frame(type, s->ch, buf, (size_t)n);
      if (s->exited) s->drain_until = now_ms() + DRAIN_MS;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    return 0;
  }
  return 1;
}

static void reap(int sfd) {
  struct signalfd_siginfo info;
  while (read(sfd, &info, sizeof info) > 0)
    if (info.ssi_signo == SIGTERM) {
      logmsg("%s", "SIGTERM: stopping");
      begin_stop();
    }
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_SESSIONS; i++) {
      struct session *s = sessions[i];
      if (!s || s->pid != pid) continue;
      s->exited = 1;
      s->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      s->drain_until = now_ms() + DRAIN_MS;
    }
  }
}

static int open_port(const char *given) {
  if (channel == CH_STDIO) return 0;
  if (given) return open(given, O_RDWR | O_CLOEXEC);
  glob_t g;
  int fd = -1;
  if (glob("/sys/class/virtio-ports/*/name", 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && fd < 0; i++) {
      char name[128] = {0};
      FILE *f = fopen(g.gl_pathv[i], "r");
      if (!f) continue;
      if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
      fclose(f);
      if (strcmp(name, PORT_NAME) != 0) continue;
      char dev[300];
      const char *dir = g.gl_pathv[i] + strlen("/sys/class/virtio-ports/");
      snprintf(dev, sizeof dev, "/dev/%.*s", (int)strcspn(dir, "/"), dir);
      fd = open(dev, O_RDWR | O_CLOEXEC);
    }
    globfree(&g);
  }
  return fd;
}

/* A crash report on stderr (the guest console: the host shows its tail) before the default action:
 * which signal, why (si_code), the faulting address and the registers that locate it in the
 * binary (static, not position-independent: pc maps onto `nm`/`addr2line` of the same build).
 * Async-signal-safe: the numbers formatted by hand, one write(2). */
static char crash_stack[16384];

static char *put_hex(char *p, const char *label, unsigned long v) {
  while (*label) *p++ = *label++;
  *p++ = '0';
  *p++ = 'x';
  int shift = 60;
  while (shift > 0 && !(v >> shift & 0xf)) shift -= 4;
  for (; shift >= 0; shift -= 4) *p++ = "0123456789abcdef"[v >> shift & 0xf];
  return p;
}

static char *put_dec(char *p, const char *label, unsigned long v) {
  char digits[24];
  int n = 0;
  while (*label) *p++ = *label++;
  do digits[n++] = (char)('0' + v % 10); while ((v /= 10) && n < 24);
  while (n) *p++ = digits[--n];
  return p;
}

static void crash_report(int sig, siginfo_t *si, void *uc_arg) {
  char line[256], *p = line;
  p = put_dec(p, "ovm-agent: fatal signal ", (unsigned long)sig);
  p = put_dec(p, si->si_code < 0 ? " code -" : " code ", (unsigned long)(si->si_code < 0 ? -si->si_code : si->si_code));
  /* si_code <= 0: sent by a process (kill, raise), whose pid is there instead of an address. */
  if (si->si_code <= 0) p = put_dec(p, " from pid ", (unsigned long)si->si_pid);
  else p = put_hex(p, " addr ", (unsigned long)si->si_addr);
  const ucontext_t *uc = uc_arg;
#if defined(__aarch64__)
  p = put_hex(p, " pc ", (unsigned long)uc->uc_mcontext.pc);
  p = put_hex(p, " lr ", (unsigned long)uc->uc_mcontext.regs[30]);
  p = put_hex(p, " sp ", (unsigned long)uc->uc_mcontext.sp);
#elif defined(__x86_64__)
  p = put_hex(p, " pc ", (unsigned long)uc->uc_mcontext.gregs[REG_RIP]);
  p = put_hex(p, " sp ", (unsigned long)uc->uc_mcontext.gregs[REG_RSP]);
#else
  (void)uc;
#endif
  *p++ = '\n';
  ssize_t ignored = write(2, line, (size_t)(p - line));
  (void)ignored;
  /* SA_RESETHAND: the default action is back; SA_NODEFER: raise() delivers it now. */
  raise(sig);
}

static void install_crash_report(void) {
  stack_t alt = {.ss_sp = crash_stack, .ss_size = sizeof crash_stack};
  sigaltstack(&alt, NULL);
  struct sigaction sa = {.sa_sigaction = crash_report, .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND | SA_NODEFER};
  sigemptyset(&sa.sa_mask);
  const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
  for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++) sigaction(fatal[i], &sa, NULL);
}

static int usage(const char *problem) {
  logmsg("%s", problem);
  fputs("usage: ovm-agent [DEVICE | --vsock PORT | --unix PATH | --stdio] [--workload]\n", stderr);
  return 2;
}

/* --workload: only PATH, HOME and TERM of what libkrun's init passed on (nothing of its own goes
 * into a command's environment), with defaults where one is missing. */
static void clean_environment(void) {
  const char *path = getenv("PATH"), *home = getenv("HOME"), *term = getenv("TERM");
  char *p = strdup(path && *path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  char *h = strdup(home && *home ? home : "/root");
  char *t = strdup(term && *term ? term : "xterm");
  clearenv();
  if (p) setenv("PATH", p, 1);
  if (h) setenv("HOME", h, 1);
  if (t) setenv("TERM", t, 1);
  free(p);
  free(h);
  free(t);
}

int main(int argc, char **argv) {
  const char *given = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--workload") == 0) {
      workload = 1;
    } else if (strcmp(argv[i], "--stdio") == 0) {
      channel = CH_STDIO;
    } else if (strcmp(argv[i], "--vsock") == 0 || strcmp(argv[i], "--unix") == 0) {
      if (i + 1 >= argc) return usage("--vsock and --unix need a value");
      channel = argv[i][2] == 'v' ? CH_VSOCK : CH_UNIX;
      channel_arg = argv[++i];
      if (channel == CH_VSOCK && strspn(channel_arg, "0123456789") != strlen(channel_arg))
        return usage("--vsock: PORT must be a number");
    } else if (argv[i][0] == '-') {
      return usage("unknown option");
    } else {
      given = argv[i];
    }
  }
  install_crash_report();
  if (workload) clean_environment();
  signal(SIGPIPE, SIG_IGN);
  /* SIGCHLD (and, with --workload, SIGTERM: stop in order) are read from a signalfd. Blocked
   * before the host is dialled: a SIGTERM while dialling is seen there (term_pending). */
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  if (workload) sigaddset(&mask, SIGTERM);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (channel == CH_VSOCK || channel == CH_UNIX) {
    redial();
  } else {
    for (int tries = 0; (port = open_port(given)) < 0; tries++) {
      if (tries == 50) {
        logmsg("no host channel (%s)", given ? given : "virtio-serial port " PORT_NAME);
        return 1;
      }
      usleep(100000);
    }
    port_out = channel == CH_STDIO ? 1 : port;
  }
  if (isatty(port)) {
    /* A terminal as the channel: raw bytes, no line discipline. */
    struct termios t;
    if (tcgetattr(port, &t) == 0) {
      cfmakeraw(&t);
      tcsetattr(port, TCSANOW, &t);
    }
  }
  if (channel != CH_VSOCK && channel != CH_UNIX) hello(); /* redial() said it */

  for (;;) {
    struct pollfd fds[2 + 3 * MAX_SESSIONS];
    struct { struct session *s; int which; } who[2 + 3 * MAX_SESSIONS];
    int n = 0, timeout = -1;
    long long now = now_ms();
    fds[n] = (struct pollfd){.fd = port, .events = POLLIN};
    who[n++].s = NULL;
    fds[n] = (struct pollfd){.fd = sfd, .events = POLLIN};
    who[n++].s = NULL;
    for (int i = 0; i < MAX_SESSIONS; i++) {
      struct session *s = sessions[i];
      if (!s) continue;
      if (s->exited) {
        long long left = s->drain_until - now;
        if (left <= 0 || (s->out_fd < 0 && s->err_fd < 0)) {
          finish_session(s);
          continue;
        }
        if (timeout < 0 || left < timeout) timeout = (int)left;
      }
      if (s->out_fd >= 0) {
        fds[n] = (struct pollfd){.fd = s->out_fd, .events = POLLIN};
        who[n].s = s; who[n++].which = 1;
      }
      if (s->err_fd >= 0) {
        fds[n] = (struct pollfd){.fd = s->err_fd, .events = POLLIN};
        who[n].s = s; who[n++].which = 2;
      }
      if (!s->tty && s->in_fd >= 0 && s->pending_len) {
        fds[n] = (struct pollfd){.fd = s->in_fd, .events = POLLOUT};
        who[n].s = s; who[n++].which = 0;
      }
    }
    if (stop_deadline) {
      /* After the sessions above: the last one may just have finished. */
      int t = stop_step();
      if (timeout < 0 || t < timeout) timeout = t;
    }
    if (poll(fds, (nfds_t)n, timeout) < 0) {
      if (errno == EINTR) continue;
      logmsg("poll: %s", strerror(errno));
      return 1;
    }
    if (fds[1].revents) reap(sfd);
    for (int i = 2; i < n; i++) {
      struct session *s = who[i].s;
      if (!fds[i].revents || !find_session(s->ch)) continue;
      if (who[i].which == 0) {
        if (fds[i].revents & POLLERR) { s->pending_len = 0; close_fd(&s->in_fd); }
        else flush_stdin(s);
      } else if (who[i].which == 1) {
        if (!pump(s, s->out_fd, F_STDOUT)) {
          if (s->tty) { close(s->out_fd); s->out_fd = -1; s->in_fd = -1; }
          else close_fd(&s->out_fd);
        }
      } else if (!pump(s, s->err_fd, F_STDERR)) {
        close_fd(&s->err_fd);
      }
    }
    if (fds[0].revents & POLLIN) read_port();
    else if (fds[0].revents && (channel == CH_VSOCK || channel == CH_UNIX)) redial();
    else if (fds[0].revents && channel == CH_STDIO) host_gone("the host closed the channel");
    else if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL)) usleep(200000); /* a port: wait for the host */
  }
}
