#!/usr/bin/env python3
"""bench_delivery.py - the measuring half of tests/bench/bench_delivery.sh.

The shell script starts the servers and processes and passes everything in
the environment; this file sends through the API, times, and prints.

  bench_delivery.py calibrate   one message of each kind through a dumping
                                smtp-sink ($CAL_DIR): prints the text
                                lengths that make Postchi's messages the
                                size smtp-source sends (-l SIZE)
  bench_delivery.py run         the scenarios; prints a Markdown summary

Timing of a throughput run: from just before the bulk POST to the last row
of its batch recorded 'sent' (max(messages.updated_at): the outcome is
written after the relay's 250, in the recorder's transaction). Completion
is polled with a short psql every 0.25 s (a server-side DO loop would hold
one snapshot for the whole run and keep PostgreSQL from pruning anything).
Same clock: PostgreSQL runs on this machine.

Each Postchi run also reports where both cores went between those two
instants: a sampler thread reads /proc/stat and every process's
/proc/<pid>/stat every 100 ms, and the run prints the idle share and the
busiest programs (postgres, postchi, smtp-sink, redis-server, ...) as
shares of the machine.

What can go wrong: an API error or a run that does not finish within its
timeout raises (the shell's trap cleans up); psql failures raise too.
"""
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

ENV = os.environ
PSQL = [ENV.get("PSQL_BIN", "/usr/lib/postgresql/15/bin/psql"), "-X", "-q", "-tA",
        "-v", "ON_ERROR_STOP=1", "-d", ENV.get("PG", "")]


def sql(q):
    """One query's output (text, stripped)."""
    return subprocess.run(PSQL + ["-c", q], check=True, capture_output=True,
                          text=True).stdout.strip()


class Api:
    """A keep-alive connection to the API (one per thread)."""

    def __init__(self):
        u = ENV["U"]
        hostport = u.split("//", 1)[1].split("/", 1)[0]
        self.host, self.port = hostport.split(":")
        self.base = "/" + u.split("//", 1)[1].split("/", 1)[1]
        self.conn = None

    def post(self, path, body):
        data = json.dumps(body).encode()
        h = {"Authorization": "Bearer " + ENV["KEY"], "Content-Type": "application/json"}
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
                self.conn.request("POST", self.base + path, data, h)
                r = self.conn.getresponse()
                out = r.read()
                if r.status >= 300:
                    raise RuntimeError("POST %s: %d %s" % (path, r.status, out[:300]))
                return json.loads(out)
            except (http.client.HTTPException, ConnectionError):
                self.conn = None
                if attempt:
                    raise
        return None


def words_text(length, seed):
    """ASCII text of exactly length chars: pseudo-words from a 3,000-word
    made-up vocabulary in lines of at most 76 chars ('\\n' ends each line).
    Varied enough that it does not compress to nothing."""
    rnd = random.Random(seed)
    syl = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "an", "el",
           "or", "is", "um", "be", "ch", "st", "tr", "ve", "qu", "ph", "ow", "ex"]
    vocab = ["".join(rnd.choice(syl) for _ in range(rnd.randint(1, 5))) for _ in range(3000)]
    out, line, n = [], "", 0
    while n < length:
        w = rnd.choice(vocab)
        if rnd.random() < 0.08:
            w = w.capitalize() + rnd.choice([",", ".", ";", ":", "!", "?"])
        if len(line) + 1 + len(w) > 76:
            out.append(line + "\n")
            n += len(line) + 1
            line = w
        else:
            line = w if not line else line + " " + w
    text = "".join(out)[:length]
    return text + "x" * (length - len(text))


def send_bulk(api, frm, list_id, text, subject):
    return api.post("/messages", {"from": {"email": frm}, "to_list": list_id,
                                  "subject": subject, "text": text})


def wait_batch(batch, n, timeout_s):
    """Until n rows of the batch are 'sent' (or timeout_s): returns
    (rows sent, epoch of the last 'sent' outcome, other statuses). Polled
    with one short psql every 0.25 s, not a server-side loop: a DO block
    keeps its first snapshot's xmin for as long as it runs, and that alone
    kept every dead row version of the run from being pruned."""
    deadline = time.time() + timeout_s
    count = "SELECT count(*) FROM messages WHERE batch_id = '%s' AND status = 'sent'" % batch
    while int(sql(count)) < n and time.time() < deadline:
        time.sleep(0.25)
    q = """
SELECT count(*), coalesce(extract(epoch FROM max(updated_at)), 0)
  FROM messages WHERE batch_id = '%s' AND status = 'sent';
SELECT coalesce(string_agg(status || '=' || n, ','), '') FROM
  (SELECT status, count(*) n FROM messages WHERE batch_id = '%s' AND status <> 'sent'
   GROUP BY status) s;
""" % (batch, batch)
    lines = sql(q).splitlines()
    sent, last = lines[0].split("|")
    return int(sent), float(last), (lines[1] if len(lines) > 1 else "")


def expanded_queued(batch, timeout_s):
    """Once the batch is whole (a bulk send is written in steps), its rows
    that are to be sent (neither suppressed nor scheduled)."""
    deadline = time.time() + timeout_s
    while (sql("SELECT status FROM batches WHERE id = '%s'" % batch).strip() == "expanding"
           and time.time() < deadline):
        time.sleep(0.1)
    return int(sql("SELECT count(*) FROM messages WHERE batch_id = '%s'"
                   " AND status NOT IN ('suppressed', 'scheduled')" % batch).splitlines()[0])


class CpuSampler:
    """Samples machine and per-program CPU ticks every 100 ms until stop();
    share(t0, t1) is the busy/idle split between two epochs (the samples
    nearest inside them)."""

    def __init__(self):
        self.samples = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @staticmethod
    def read():
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        progs = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % pid) as f:
                    st = f.read()
            except OSError:
                continue
            comm = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            # utime + stime by pid (a kernel worker's name changes with
            # its work item: keyed by name it would count as new, with its
            # whole lifetime's ticks)
            progs[pid] = (comm, int(f[11]) + int(f[12]))
        # idle + iowait, and all ticks
        return time.time(), cpu[3] + cpu[4], sum(cpu[:8]), progs

    def loop(self):
        while not self.done.is_set():
            self.samples.append(self.read())
            self.done.wait(0.1)

    def stop(self):
        self.done.set()
        self.thread.join()

    def share(self, t0, t1):
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return None
        a, b = inside[0], inside[-1]
        total = b[2] - a[2]
        if total <= 0:
            return None
        byprog = {}
        for pid, (prog, ticks) in b[3].items():
            if prog.startswith("postgres") or prog in ("postmaster",):
                prog = "postgres"
            elif prog.startswith("kworker"):
                prog = "kworker"
            byprog[prog] = byprog.get(prog, 0) + ticks - a[3].get(pid, ("", 0))[1]
        top = sorted(((v, k) for k, v in byprog.items() if v > 0), reverse=True)[:5]
        return (b[1] - a[1]) / total, [(k, v / total) for v, k in top]


SAMPLER = None


def cpu_note(t0, t1):
    got = SAMPLER.share(t0, t1) if SAMPLER else None
    if not got:
        return ""
    idle, top = got
    return "; CPU idle %.0f%%, %s" % (100 * idle, ", ".join("%s %.0f%%" % (k, 100 * v)
                                                              for k, v in top))


def postchi_run(api, frm, list_id, n, text, label):
    """One timed bulk send of the list's n members (None: as many as were
    queued): (msg/s, POST seconds, total seconds)."""
    t0 = time.time()
    r = send_bulk(api, frm, list_id, text, label)
    t_post = time.time() - t0
    if n is None:
        n = expanded_queued(r["batch_id"], 120)
    if r.get("status") not in ("expanding", "expanded") or n == 0:
        raise RuntimeError("%s: the send was not accepted as expected: %s" % (label, r))
    sent, last, rest = wait_batch(r["batch_id"], n, max(120, n // 50))
    if sent != n:
        raise RuntimeError("%s: %d of %d rows sent in time; the rest: %s" % (label, sent, n, rest))
    run_cpu[label] = cpu_note(t0, last)
    return n / (last - t0), t_post, last - t0


run_cpu = {}


def smtp_source(n, size, sessions):
    """smtp-source's rate: n messages of size payload bytes, sessions."""
    t0 = time.time()
    subprocess.run(["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(n), "-l", str(size),
                    "-f", "bench@send.example", "-t", "rcpt@src.example",
                    "127.0.0.1:" + ENV["SINK"]], check=True, stdout=subprocess.DEVNULL)
    return n / (time.time() - t0)


def openssl_rsa(multi):
    """openssl speed rsa2048 sign/s (-multi 2: both cores, summed)."""
    cmd = ["openssl", "speed", "-seconds", "3"] + (["-multi", str(multi)] if multi > 1 else []) \
        + ["rsa2048"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        # "rsa 2048 bits 0.000677s 0.000020s 1477.7 50389.2" (one process);
        # "rsa 2048 bits ... sign/s verify/s" after -multi's "Got:" lines too
        if len(f) >= 7 and f[0] == "rsa" and f[1] == "2048" and f[2] == "bits":
            return float(f[5])
    raise RuntimeError("no rsa 2048 line in: " + out)


# ---------------------------------------------------------------- calibrate

def dump_size(directory, marker, end=b"CALIBRATION-END"):
    """Size of the one dump file holding marker (and, unless end is None,
    ending in end: written whole); waits up to 30 s."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for name in os.listdir(directory):
            p = os.path.join(directory, name)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if marker.encode() in data and (end is None or data.rstrip().endswith(end)):
                return len(data)
        time.sleep(0.1)
    raise RuntimeError("calibration message %s never reached the sink" % marker)


def calibrate():
    api = Api()
    d = ENV["CAL_DIR"]
    size, size100 = int(ENV["SIZE"]), int(ENV["SIZE100"])
    out = {}
    for key, frm, target in (("ed", ENV["FROM_ED"], size), ("both", ENV["FROM_BOTH"], size),
                             ("100k", ENV["FROM_BOTH"], size100)):
        # smtp-source's message as the sink dumps it, then ours with a
        # known text length: the difference is what to add to the text.
        src_marker = "src-%s@cal.example" % key
        subprocess.run(["/usr/sbin/smtp-source", "-m", "1", "-l", str(target), "-f",
                        "bench@send.example", "-t", src_marker,
                        "127.0.0.1:" + ENV["CAL_SINK"]], check=True)
        # smtp-source's payload has no end mark of ours: any file holding its marker
        want = dump_size(d, src_marker, None)
        l0 = target // 2
        marker = "cal-%s@cal.example" % key
        text = words_text(l0, 1) + "\nCALIBRATION-END"
        api.post("/messages", {"from": {"email": frm}, "to": [marker], "subject": "Bench",
                               "text": text})
        got = dump_size(d, marker)
        out[key] = len(text) - len("\nCALIBRATION-END") + (want - got)
        print("calibration %s: smtp-source -l %d dumps %d bytes; Postchi with %d text chars"
              " dumps %d; text length for the same size: %d"
              % (key, target, want, len(text), got, out[key]), file=sys.stderr)
    print("TEXT_ED=%d TEXT_BOTH=%d TEXT_100K=%d" % (out["ed"], out["both"], out["100k"]))


def med(xs):
    return statistics.median(xs)


def fmt(xs):
    return ", ".join("%.0f" % x for x in xs)


def throughput(name, frm, list_id, n, text, src_size, runs, sessions, warm_list):
    """runs x (smtp-source, Postchi) interleaved; returns (postchi rates,
    smtp-source rates, POST seconds)."""
    api = Api()
    # Warm-up (not counted): actors activated, connections open.
    if warm_list:
        postchi_run(api, frm, warm_list, None, text, name + " warm-up")
    ours, src, posts = [], [], []
    for i in range(runs):
        if src_size:
            src.append(smtp_source(n, src_size, sessions))
        rate, t_post, total = postchi_run(api, frm, list_id, n, text, "%s run %d" % (name, i + 1))
        ours.append(rate)
        posts.append(t_post)
        print("  %s run %d: Postchi %.0f msg/s (%d in %.2f s; the POST took %.2f s%s)%s"
              % (name, i + 1, rate, n, total, t_post, run_cpu.get("%s run %d" % (name, i + 1), ""),
                 "; smtp-source %.0f msg/s" % src[-1] if src_size else ""), flush=True)
    return ours, src, posts


def latency(frm, list_id, per_post, interval, seconds, rcpt_domain):
    """Open loop: a bulk send of per_post every interval s for seconds.
    Prints the achieved submit rate and p50/p99/max of acceptance to the
    'sent' record."""
    posts = int(round(seconds / interval))
    text = words_text(int(ENV["TEXT_BOTH"]), 7)
    results, errors, lock = [], [], threading.Lock()
    local = threading.local()

    def post(k, due):
        if not hasattr(local, "api"):
            local.api = Api()
        start = time.time()
        try:
            r = send_bulk(local.api, frm, list_id, text, "latency %d" % k)
            with lock:
                results.append((due, start, time.time(), r["batch_id"], r.get("queued")))
        except Exception as e:  # reported below, the run goes on
            with lock:
                errors.append(str(e))

    # Four submitters so one slow POST does not hold the schedule up; the
    # schedule is fixed in advance (open loop), lateness is reported.
    threads = []
    sem = threading.Semaphore(4)

    def runner(k, due):
        try:
            post(k, due)
        finally:
            sem.release()

    t0 = time.time() + 0.2
    for k in range(posts):
        due = t0 + k * interval
        now = time.time()
        if due > now:
            time.sleep(due - now)
        sem.acquire()
        t = threading.Thread(target=runner, args=(k, due))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("latency: %d POSTs failed, first: %s" % (len(errors), errors[0]))
    first = min(r[1] for r in results)
    last_done = max(r[2] for r in results)
    late = sorted(r[1] - r[0] for r in results)
    n = sum(r[4] for r in results)
    submit_rate = n / (last_done - first)
    total = len(results) * per_post
    # every row of these batches sent?
    deadline = time.time() + 120
    while True:
        left = int(sql("SELECT count(*) FROM messages WHERE recipient_domain = '%s'"
                       " AND status <> 'sent'" % rcpt_domain))
        if left == 0 or time.time() > deadline:
            break
        time.sleep(1)
    if left:
        raise RuntimeError("latency: %d rows not sent after 120 s" % left)
    row = sql("""
SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY l),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l),
       extract(epoch FROM max(sent_at) - min(created))
  FROM (SELECT extract(epoch FROM e.created_at - m.created_at) * 1000 AS l,
               e.created_at AS sent_at, m.created_at AS created
          FROM messages m JOIN message_events e ON e.message_id = m.id AND e.type = 'sent'
         WHERE m.recipient_domain = '%s') x""" % rcpt_domain)
    cnt, p50, p99, mx, span = row.split("|")
    cnt = int(cnt)
    if cnt != total:
        raise RuntimeError("latency: %d 'sent' events for %d rows" % (cnt, total))
    return {"n": total, "posts": len(results), "submit_rate": submit_rate,
            "delivered_rate": cnt / float(span), "late_p99_ms": late[int(0.99 * (len(late) - 1))] * 1000,
            "late_max_ms": late[-1] * 1000, "p50": float(p50), "p99": float(p99), "max": float(mx)}


def run():
    global SAMPLER
    SAMPLER = CpuSampler()
    scen = set(ENV.get("BENCH_SCENARIOS", "ed25519,both,100k,latency").split(","))
    runs = int(ENV["BENCH_RUNS"])
    n, n100 = int(ENV["N"]), int(ENV["N100"])
    size, size100, sessions = int(ENV["SIZE"]), int(ENV["SIZE100"]), int(ENV["SESSIONS"])
    rows = []  # the summary table
    print("== baseline: openssl speed -seconds 3 rsa2048 (one core, then -multi 2)", flush=True)
    rsa1 = rsa2 = None
    if scen & {"both", "100k"}:
        rsa1 = openssl_rsa(1)
        rsa2 = openssl_rsa(2)
        print("  rsa2048 sign/s: %.0f on one core, %.0f on both (-multi 2)" % (rsa1, rsa2),
              flush=True)

    if "ed25519" in scen:
        print("== 1. %d x %d B, Ed25519 only, vs smtp-source (%d sessions), %d runs"
              % (n, size, sessions, runs), flush=True)
        text = words_text(int(ENV["TEXT_ED"]), 1)
        ours, src, _ = throughput("ed25519", ENV["FROM_ED"], ENV["LIST_ED"], n, text, size, runs,
                                  sessions, ENV.get("WARM_ED"))
        r = med(ours) / med(src)
        print("  median: Postchi %.0f msg/s, smtp-source %.0f msg/s, ratio %.2f (target >= 0.5)"
              % (med(ours), med(src), r), flush=True)
        rows.append(("2 KB, Ed25519 only: Postchi / smtp-source (%d sessions)" % sessions,
                     "%.0f / %.0f msg/s" % (med(ours), med(src)), "%.2f" % r, ">= 0.5",
                     "Postchi %s; smtp-source %s" % (fmt(ours), fmt(src))))

    if "both" in scen:
        print("== 2. %d x %d B, Ed25519 + RSA-2048 (default), vs openssl rsa2048 on both cores,"
              " %d runs" % (n, size, runs), flush=True)
        text = words_text(int(ENV["TEXT_BOTH"]), 2)
        ours, _, _ = throughput("both", ENV["FROM_BOTH"], ENV["LIST_BOTH"], n, text, 0, runs,
                                sessions, ENV.get("WARM_BOTH"))
        r = med(ours) / rsa2
        print("  median: Postchi %.0f msg/s; rsa2048 %.0f sign/s on 2 cores (%.0f on one);"
              " ratio %.2f (target >= 0.6)" % (med(ours), rsa2, rsa1, r), flush=True)
        rows.append(("2 KB, both signatures: Postchi / `openssl speed -multi 2 rsa2048` sign/s",
                     "%.0f / %.0f" % (med(ours), rsa2), "%.2f" % r, ">= 0.6",
                     "Postchi %s; rsa2048 one core %.0f" % (fmt(ours), rsa1)))

    if "100k" in scen:
        print("== 3. %d x %d B, Ed25519 + RSA-2048, %d runs (smtp-source -l %d as context)"
              % (n100, size100, runs, size100), flush=True)
        text = words_text(int(ENV["TEXT_100K"]), 3)
        ours, src, posts = throughput("100k", ENV["FROM_BOTH"], ENV["LIST_100K"], n100, text,
                                      size100, runs, sessions, ENV.get("WARM_100K"))
        print("  median: Postchi %.0f msg/s (target >= 1,000), smtp-source %.0f msg/s; the POST"
              " (acceptance of %d rows) took %.2f s (median)"
              % (med(ours), med(src), n100, med(posts)), flush=True)
        rows.append(("100 KB, both signatures", "%.0f msg/s" % med(ours),
                     "%.2f of smtp-source (%.0f)" % (med(ours) / med(src), med(src)),
                     ">= 1,000 msg/s", "Postchi %s; POST %.1f s of each" % (fmt(ours), med(posts))))

    if "latency" in scen:
        secs = float(ENV["LAT_SECONDS"])
        print("== 4. latency: a bulk send of 100 every 100 ms for %.0f s (1,000 msg/s offered),"
              " both signatures" % secs, flush=True)
        L = latency(ENV["FROM_BOTH"], ENV["LIST_LAT"], 100, 0.1, secs, ENV["RCPT_LAT"])
        print("  submitted %d messages in %d POSTs at %.0f msg/s (POSTs started late by p99 %.0f ms,"
              " max %.0f ms); delivered at %.0f msg/s"
              % (L["n"], L["posts"], L["submit_rate"], L["late_p99_ms"], L["late_max_ms"],
                 L["delivered_rate"]))
        print("  acceptance to 'sent' record: p50 %.0f ms, p99 %.0f ms, max %.0f ms (target p99 <"
              " 250 ms)" % (L["p50"], L["p99"], L["max"]))
        print("  (acceptance = messages.created_at, the start of the API's transaction; the 'sent'"
              " event is written after the relay's 250, so this is an upper bound on acceptance to"
              " receipt)", flush=True)
        rows.append(("p99 acceptance to receipt at %.0f msg/s submitted" % L["submit_rate"],
                     "%.0f ms" % L["p99"], "p50 %.0f ms, max %.0f ms" % (L["p50"], L["max"]),
                     "< 250 ms", "upper bound: until the 'sent' record, after the 250"))

    print()
    print("## Summary (paste into docs/BENCHMARKS.md)")
    print()
    print("Command: `%s`" % ENV.get("BENCH_COMMAND", "tests/bench/bench_delivery.sh"))
    print("Runs: %d per throughput scenario, medians; %d x 2 KB, %d x 100 KB; %d SMTP sessions"
          " (2 workers x %d, smtp-source -s %d); PostgreSQL durable (fsync on)."
          % (runs, n, n100, sessions, sessions // 2, sessions))
    print()
    print("| scenario | median | ratio / detail | target | runs |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| %s |" % " | ".join(r))


if __name__ == "__main__":
    {"calibrate": calibrate, "run": run}[sys.argv[1]]()
