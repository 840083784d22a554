# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "pty"

# The `mega_mutex` command, driven as a real subprocess against the suite's
# memcached. Children run without bundler/setup (RUBYOPT stripped): faster,
# and it proves exe/mega_mutex finds its own lib/.
RSpec.describe "the mega_mutex command" do
  exe = File.join(SpecHelpers::ROOT, "exe", "mega_mutex")

  # Holds until file $2 exists (at most ~30 s), after touching $1; touches $3
  # on the way out and exits ${4:-0}.
  hold_script = <<~'SH'
    touch "$1"
    i=0
    while [ ! -e "$2" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
    touch "$3"
    exit "${4:-0}"
  SH

  # Traps TERM, INT and HUP: writes the signal's name to $2 and exits 42.
  trap_script = <<~'SH'
    for sig in TERM INT HUP; do trap "echo $sig > \"\$2\"; exit 42" $sig; done
    touch "$1"
    i=0
    while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
    exit 9
  SH

  before do
    @dir = Dir.mktmpdir("mega_mutex_cli")
    @pids = []
    @name = "job-#{SecureRandom.hex(3)}"
  end

  after do
    # TERM first: mega_mutex passes it on, so no COMMAND outlives the example.
    @pids.each do |pid|
      Process.kill(:TERM, pid)
      deadline = monotonic + 5
      sleep 0.01 while Process.wait(pid, Process::WNOHANG).nil? && monotonic < deadline
      Process.kill(:KILL, pid)
      Process.wait(pid)
    rescue SystemCallError
      nil
    end
    FileUtils.rm_rf(@dir)
  end

  define_method(:exe) { exe }
  define_method(:hold_script) { hold_script }
  define_method(:trap_script) { trap_script }

  def path(name)
    File.join(@dir, name)
  end

  def cli_env(extra = {})
    rubyopt = ENV["RUBYOPT"].to_s.split.reject { |opt| opt.include?("bundler") }.join(" ")
    { "RUBYOPT" => rubyopt, "BUNDLE_GEMFILE" => nil, "MEMCACHE_SERVERS" => memcached.address }.merge(extra)
  end

  # The command line: ruby exe/mega_mutex --namespace <this example's> ARGS.
  def mm(*args)
    [RbConfig.ruby, exe, "--namespace", @namespace, *args]
  end

  # Runs the command to its end (at most `within` seconds); returns
  # [stdout, stderr, Process::Status].
  def run_cli(*args, env: {}, within: 20, argv: mm(*args))
    Open3.popen3(cli_env(env), *argv, chdir: SpecHelpers::ROOT) do |stdin, stdout, stderr, waiter|
      stdin.close
      out = Thread.new { stdout.read }
      err = Thread.new { stderr.read }
      unless waiter.join(within)
        Process.kill(:KILL, waiter.pid)
        raise "mega_mutex #{args.join(' ')} did not finish within #{within} s"
      end
      [out.value, err.value, waiter.value]
    end
  end

  # Starts the command in the background; stdout and stderr go to files.
  def spawn_cli(*args, tag: "cli", argv: mm(*args))
    pid = Process.spawn(cli_env, *argv, chdir: SpecHelpers::ROOT, in: File::NULL,
                                         out: path("#{tag}.out"), err: path("#{tag}.err"))
    @pids << pid
    pid
  end

  def wait_exit(pid, within: 20)
    status = wait_for(within: within, message: "pid #{pid} to exit") { Process.wait2(pid, Process::WNOHANG)&.last }
    @pids.delete(pid)
    status
  end

  def wait_file(file, within: 10)
    wait_for(within: within, message: "#{File.basename(file)} to exist") { File.exist?(file) }
  end

  def holder
    MegaMutex.get_current_lock(@name)
  end

  def holder_of(name)
    MegaMutex.get_current_lock(name)
  end

  # True while `pid` runs (a zombie nobody has reaped yet counts as gone).
  def alive?(pid)
    state = File.read("/proc/#{pid}/stat")[/\) (\S)/, 1]
    !state.nil? && state != "Z"
  rescue SystemCallError
    false
  end

  # Starts `exec NAME -- hold_script`; returns [pid, token] once it runs.
  def start_holder(*options, tag: "holder", exit_code: 0)
    pid = spawn_cli("exec", @name, *options, "--", "sh", "-c", hold_script, "sh",
                    path("#{tag}.started"), path("#{tag}.go"), path("#{tag}.done"), exit_code.to_s, tag: tag)
    wait_file(path("#{tag}.started"))
    token = holder
    expect(token).to match(/\A.+:#{pid}:\h+\z/)
    [pid, token]
  end

  def let_go(tag = "holder")
    FileUtils.touch(path("#{tag}.go"))
  end

  describe "--help and --version" do
    it "prints the version, run as an executable without bundler" do
      out, err, status = run_cli(argv: [exe, "--version"])
      expect([out, err, status.exitstatus]).to eq(["mega_mutex #{MegaMutex::VERSION}\n", "", 0])
    end

    it "works from the checkout as bundle exec exe/mega_mutex" do
      out, _, status = run_cli(argv: ["bundle", "exec", "exe/mega_mutex", "--version"],
                               env: { "RUBYOPT" => ENV.fetch("RUBYOPT", nil), "BUNDLE_GEMFILE" => ENV.fetch("BUNDLE_GEMFILE", nil) })
      expect([out, status.exitstatus]).to eq(["mega_mutex #{MegaMutex::VERSION}\n", 0])
    end

    it "prints the subcommands, options and exit statuses on stdout" do
      out, err, status = run_cli("--help")
      expect(status.exitstatus).to eq(0)
      expect(err).to eq("")
      expect(out).to include("exec NAME", "status NAME", "release NAME --force", "--servers", "--namespace",
                             "Exit statuses", "75", "69", "64")
    end

    it "prints each subcommand's own help" do
      out, _, status = run_cli("exec", "--help")
      expect(status.exitstatus).to eq(0)
      expect(out).to include("Usage: mega_mutex exec NAME", "--timeout S", "--wait", "--ttl S", "--servers")
      out, = run_cli("help", "release")
      expect(out).to include("Usage: mega_mutex release NAME --force", "--force")
      out, = run_cli("status", "-h")
      expect(out).to include("Usage: mega_mutex status NAME")
    end
  end

  describe "usage errors" do
    {
      "no command" => [],
      "an unknown command" => %w[lock x],
      "an unknown option" => %w[exec x --tiemout 5 -- true],
      "exec without NAME" => %w[exec],
      "exec without NAME but with a command" => %w[exec --wait --],
      "exec without COMMAND" => %w[exec x --],
      "exec NAME alone" => %w[exec x],
      "a bad --timeout" => %w[exec x --timeout soon -- true],
      "a negative --timeout" => %w[exec x --timeout -1 -- true],
      "a --ttl under a second" => %w[exec x --ttl 0.5 -- true],
      "--timeout with --wait" => %w[exec x --timeout 1 --wait -- true],
      "two names" => %w[exec x y -- true],
      "status without NAME" => %w[status],
      "release without --force" => %w[release x],
      "a bad --servers" => %w[--servers mc1:99999 status x],
      "a bad --namespace" => ["status", "x", "--namespace", "has space"],
      "an unknown --backend" => %w[--backend redis status x],
      "--backend memory (one process only: no use to a command)" => %w[status x --backend memory],
      "an empty NAME" => ["status", ""]
    }.each do |what, args|
      it "exits 64 with a message and a usage hint for #{what}" do
        out, err, status = run_cli(argv: [RbConfig.ruby, exe, *args])
        expect(status.exitstatus).to eq(64)
        expect(out).to eq("")
        expect(err).to match(/\Amega_mutex: .+\nTry 'mega_mutex( \w+)? --help'\.\n\z/)
      end
    end

    it "explains that release needs --force" do
      _, err, status = run_cli("release", @name)
      expect(status.exitstatus).to eq(64)
      expect(err).to include("--force", "whoever holds it")
    end
  end

  describe "exec" do
    it "runs COMMAND, passing its output through, and exits with its status" do
      out, err, status = run_cli("exec", @name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
      expect([out, err, status.exitstatus]).to eq(["out\n", "err\n", 3])
      expect(holder).to be_nil
    end

    it "runs COMMAND without a shell, its arguments as given; the -- is optional" do
      out, _, status = run_cli("exec", @name, "--", "printf", "%s|", "a b", "$HOME", "*", "; true")
      expect([out, status.exitstatus]).to eq(["a b|$HOME|*|; true|", 0])
      out, _, status = run_cli("exec", @name, "--ttl", "5", "printf", "%s", "-x")
      expect([out, status.exitstatus]).to eq(["-x", 0])
    end

    it "exits 128+N when COMMAND dies of signal N" do
      _, _, status = run_cli("exec", @name, "--", "sh", "-c", "kill -KILL $$")
      expect(status.exitstatus).to eq(128 + 9)
      expect(holder).to be_nil
    end

    it "holds NAME while COMMAND runs and releases it when COMMAND exits" do
      pid, token = start_holder
      expect(MegaMutex::Lock.new(@name).try_lock).to be(false)
      let_go
      expect(wait_exit(pid).exitstatus).to eq(0)
      expect(holder).to be_nil
      lock = MegaMutex::Lock.new(@name)
      expect(lock.try_lock).to be(true)
      expect(lock.unlock).to be(true) # this thread's registry stays empty for later examples
      expect(token).not_to be_nil
    end

    it "excludes a second run: it exits 75 naming the holder; with --wait or --timeout it runs afterwards" do
      pid, token = start_holder
      out, err, status = run_cli("exec", @name, "--", "touch", path("second"))
      expect(status.exitstatus).to eq(75)
      expect(out).to eq("")
      expect(err).to match(/\Amega_mutex: #{Regexp.escape(@name)} is held by #{Regexp.escape(token)}.*\n\z/)
      expect(File.exist?(path("second"))).to be(false)

      # Each waiter's command succeeds only if the first run has finished.
      after_first = ["sh", "-c", 'test -e "$1" && touch "$2"', "sh", path("holder.done")]
      waiting = spawn_cli("exec", @name, "--wait", "--", *after_first, path("waited"), tag: "waiting")
      timed = spawn_cli("exec", @name, "--timeout", "15", "--", *after_first, path("timed"), tag: "timed")
      let_go
      expect(wait_exit(pid).exitstatus).to eq(0)
      expect(wait_exit(waiting).exitstatus).to eq(0)
      expect(wait_exit(timed).exitstatus).to eq(0)
      expect([File.exist?(path("waited")), File.exist?(path("timed"))]).to eq([true, true])
      expect(File.read(path("waiting.err"))).to eq("") # no waiting line: stderr is not a terminal
      expect(holder).to be_nil
    end

    it "gives up after --timeout, naming the holder" do
      pid, token = start_holder
      _, err, status = run_cli("exec", @name, "--timeout", "0.3", "--", "true")
      expect(status.exitstatus).to eq(75)
      expect(err).to include("is held by #{token}", "gave up after 0.3 s")
      let_go
      expect(wait_exit(pid).exitstatus).to eq(0)
    end

    %w[TERM INT HUP].each do |sig|
      it "forwards #{sig} to COMMAND and exits with its status" do
        pid = spawn_cli("exec", @name, "--", "sh", "-c", trap_script, "sh", path("started"), path("marker"))
        wait_file(path("started"))
        Process.kill(sig, pid)
        wait_file(path("marker"))
        expect(wait_exit(pid).exitstatus).to eq(42)
        expect(File.read(path("marker"))).to eq("#{sig}\n")
        expect(holder).to be_nil
      end
    end

    it "exits 128+N when COMMAND dies of the forwarded signal" do
      # sh or, once it has exec'd, sleep: either dies of TERM.
      pid = spawn_cli("exec", @name, "--", "sh", "-c", 'touch "$1"; exec sleep 30', "sh", path("started"))
      wait_file(path("started"))
      Process.kill(:TERM, pid)
      expect(wait_exit(pid).exitstatus).to eq(128 + 15)
      expect(holder).to be_nil
    end

    it "leaves a signal ignored at its start ignored, for COMMAND too (nohup)" do
      out, _, status = run_cli(argv: ["nohup", *mm("exec", @name, "--", "grep", "^SigIgn", "/proc/self/status")])
      expect(status.exitstatus).to eq(0)
      expect(out.split.last.to_i(16) & 1).to eq(1) # SIGHUP is signal 1, bit 0
    end

    it "renews the lease while COMMAND outlives --ttl" do
      pid, token = start_holder("--ttl", "1")
      out, _, status = run_cli("status", @name)
      expect(status.exitstatus).to eq(1)
      lease = out[/lease (\d+) s left/, 1].to_i
      expect(lease).to be_between(0, 3) # the server counts ttl + 2 s
      started = monotonic
      # Without renewal the item (ttl 1 + 2 s on the wire) is gone within 3 s.
      wait_for(within: 10, message: "3.5 s of continuous hold") do
        expect(holder).to eq(token)
        monotonic - started > 3.5
      end
      let_go
      expect(wait_exit(pid).exitstatus).to eq(0)
      expect(File.read(path("holder.err"))).to eq("")
      expect(holder).to be_nil
    end

    it "warns and exits 70 when the lease was lost while COMMAND ran and COMMAND succeeded" do
      pid, token = start_holder("--ttl", "1")
      out, _, status = run_cli("release", @name, "--force")
      expect([out, status.exitstatus]).to eq(["#{@name}: released (was held by #{token})\n", 0])
      let_go
      expect(wait_exit(pid).exitstatus).to eq(70)
      expect(File.read(path("holder.err"))).to match(/\Amega_mutex: warning: Lost the lock "#{Regexp.escape(@name)}".*\n\z/)
    end

    it "keeps COMMAND's failing status when the lease was lost too" do
      pid, = start_holder(exit_code: 5)
      MegaMutex.pool.with { |client| client._force_release(key_for(@name)) }
      let_go
      expect(wait_exit(pid).exitstatus).to eq(5)
      expect(File.read(path("holder.err"))).to include("warning: Lost the lock")
    end

    it "exits 127 when COMMAND is not found, and releases the lock" do
      _, err, status = run_cli("exec", @name, "--", "no-such-command-#{SecureRandom.hex(4)}")
      expect(status.exitstatus).to eq(127)
      expect(err).to match(/\Amega_mutex: no-such-command-\h+: command not found\n\z/)
      expect(holder).to be_nil
    end

    it "says 'No such file or directory', as the shell does, for a COMMAND path that does not exist" do
      _, err, status = run_cli("exec", @name, "--", "/nonexistent/#{@name}")
      expect(status.exitstatus).to eq(127)
      expect(err).to eq("mega_mutex: /nonexistent/#{@name}: No such file or directory\n")
      expect(holder).to be_nil
    end

    describe "when mega_mutex itself is killed with -9" do
      # COMMAND: a shell with a child of its own (the usual sh -c '...' job).
      family_script = <<~'SH'
        sleep 60 &
        echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"
        wait
      SH

      # Another exec --wait, once it gets the lock, writes which of the pids
      # are still running into `report`.
      check_script = <<~'SH'
        out="$1"; shift
        : > "$out"
        for p in "$@"; do
          s=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
          if [ -n "$s" ] && [ "$s" != Z ]; then echo "$p" >> "$out"; fi
        done
      SH

      it "takes COMMAND and its children down with it, before anyone else can get the lock" do
        pid = spawn_cli("exec", @name, "--ttl", "1", "--", "sh", "-c", family_script, "sh", path("pids"))
        wait_file(path("pids"))
        family = File.read(path("pids")).split.map { |p| Integer(p) }
        expect(family.all? { |p| alive?(p) }).to be(true)
        expect(holder).to match(/:#{pid}:/)

        Process.kill(:KILL, pid)
        wait_exit(pid)
        # The lock is still held (its lease runs 3 s more) while COMMAND dies.
        wait_for(within: 2, message: "COMMAND (#{family.join(', ')}) to be gone") { family.none? { |p| alive?(p) } }

        _, err, status = run_cli("exec", @name, "--wait", "--", "sh", "-c", check_script, "sh", path("report"), *family.map(&:to_s))
        expect([err, status.exitstatus]).to eq(["", 0])
        expect(File.read(path("report"))).to eq("") # none of them ran while the next holder did
      ensure
        family&.each { |p| Process.kill(:KILL, p) rescue nil } # rubocop:disable Style/RescueModifier
      end

      it "leaves the processes alone when COMMAND ends normally" do
        out, _, status = run_cli("exec", @name, "--", "sh", "-c", 'sleep 30 >/dev/null 2>&1 & echo $!')
        expect(status.exitstatus).to eq(0)
        background = Integer(out)
        expect(alive?(background)).to be(true) # as under flock: what COMMAND leaves behind is its own business
      ensure
        Process.kill(:KILL, background) if background
      end
    end

    it "takes any bytes as NAME and arguments, also invalid UTF-8 under a UTF-8 locale" do
      name = "job\xff\xfe #{@name}".b
      env = { "LC_ALL" => "C.UTF-8", "LANG" => "C.UTF-8" }
      out, err, status = run_cli("exec", name, "--", "printf", "%s", "arg\xff".b, env: env)
      expect([out.b, err, status.exitstatus]).to eq(["arg\xff".b, "", 0])

      lock = held_elsewhere(name)
      out, err, status = run_cli("status", name, env: env)
      expect([err, status.exitstatus]).to eq(["", 1])
      expect(out.b).to start_with("#{name}: held by #{holder_of(name)}".b)
      lock.unlock
      out, _, status = run_cli("status", name, env: env)
      expect(status.exitstatus).to eq(0)
      expect(out.b).to start_with("#{name}: free".b)
    end

    it "exits 126 when COMMAND is not executable, and releases the lock" do
      File.write(path("script"), "#!/bin/sh\necho no\n")
      File.chmod(0o644, path("script"))
      out, err, status = run_cli("exec", @name, "--", path("script"))
      expect([out, status.exitstatus]).to eq(["", 126])
      expect(err).to include("cannot execute")
      expect(holder).to be_nil
    end

    it "exits 69 when memcached cannot be reached, without running COMMAND" do
      port = MemcachedServer.free_port
      _, err, status = run_cli("--servers", "127.0.0.1:#{port}", "exec", @name, "--wait", "--", "touch", path("ran"),
                               within: 10)
      expect(status.exitstatus).to eq(69)
      expect(err).to match(/\Amega_mutex: .*127\.0\.0\.1:#{port}.*\n\z/)
      expect(File.exist?(path("ran"))).to be(false)
    end

    it "takes the backend from MEGA_MUTEX_BACKEND, named in its error; --backend memcached is the default" do
      _, err, status = run_cli("status", "x", env: { "MEGA_MUTEX_BACKEND" => "etcd" })
      expect(status.exitstatus).to eq(64)
      expect(err).to start_with("mega_mutex: MEGA_MUTEX_BACKEND must be one of memcached, ")
      _, _, status = run_cli("exec", @name, "--backend", "memcached", "--", "touch", path("ran"))
      expect(status.exitstatus).to eq(0)
      expect(File.exist?(path("ran"))).to be(true)
    end

    it "runs COMMAND holding a MariaDB named lock with --backend mysql --mysql-url, and says who holds it" do
      url = Servers::MariaDB.shared.url
      _, _, status = run_cli("exec", @name, "--backend", "mysql", "--mysql-url", url, "--", "touch", path("ran"))
      expect(status.exitstatus).to eq(0)
      expect(File.exist?(path("ran"))).to be(true)
      _, err, status = run_cli("status", @name, "--backend", "mysql", "--mysql-url", "mysql://nobody@127.0.0.1:1")
      expect(status.exitstatus).to eq(69)
      expect(err).to include("127.0.0.1:1")
      _, err, status = run_cli("status", @name, "--backend", "mysql", "--mysql-url", "postgres://db1")
      expect(status.exitstatus).to eq(64)
      expect(err).to start_with("mega_mutex: --mysql-url")
    end

    it "uses MEMCACHE_SERVERS when --servers is not given" do
      port = MemcachedServer.free_port
      _, err, status = run_cli("exec", @name, "--", "true", env: { "MEMCACHE_SERVERS" => "127.0.0.1:#{port}" })
      expect(status.exitstatus).to eq(69)
      expect(err).to include(":#{port}")
    end

    describe "on a terminal" do
      # Reads what the pty has; true at its end.
      def pty_read(reader, buffer)
        buffer << reader.read_nonblock(4096)
        false
      rescue IO::WaitReadable
        false
      rescue EOFError, Errno::EIO
        true
      end

      def pty_exec(*args)
        reader, _writer, pid = PTY.spawn(cli_env, *mm("exec", @name, *args))
        @pids << pid
        [reader, pid]
      end

      it "shows a live waiting line naming the holder, and clears it once the lock is taken" do
        lock = held_elsewhere(@name)
        token = holder
        reader, pid = pty_exec("--wait", "--", "echo", "ran")
        buffer = +""
        wait_for(within: 10, message: "the waiting line") { pty_read(reader, buffer) || buffer.include?(token) }
        expect(buffer).to match(/\rmega_mutex: waiting for #{Regexp.escape(@name)}: \d+\.\d s, held by #{Regexp.escape(token)}\e\[K/)
        lock.unlock
        wait_for(within: 10, message: "the end of output") { pty_read(reader, buffer) }
        expect(wait_exit(pid).exitstatus).to eq(0)
        expect(buffer).to match(/\r\e\[K(?:\r\n)?ran\r\n\z/)
      end

      it "gives COMMAND the terminal: it can read it" do
        reader, writer, pid = PTY.spawn(cli_env, *mm("exec", @name, "--", "sh", "-c", 'echo ready; read line; echo "got $line"'))
        @pids << pid
        buffer = +""
        wait_for(within: 10, message: "COMMAND to start") { pty_read(reader, buffer) || buffer.include?("ready") }
        writer.write("hello\n")
        wait_for(within: 10, message: "COMMAND to read the line") { pty_read(reader, buffer) || buffer.include?("got hello") }
        expect(wait_exit(pid).exitstatus).to eq(0)
        expect(holder).to be_nil
      end

      it "ends the wait on TERM with 143, leaving the holder alone" do
        lock = held_elsewhere(@name)
        token = holder
        reader, pid = pty_exec("--timeout", "30", "--", "touch", path("ran"))
        buffer = +""
        wait_for(within: 10, message: "the waiting line") { pty_read(reader, buffer) || buffer.include?("of 30 s") }
        Process.kill(:TERM, pid)
        expect(wait_exit(pid).exitstatus).to eq(128 + 15)
        expect(File.exist?(path("ran"))).to be(false)
        expect(holder).to eq(token)
        lock.unlock
      end
    end
  end

  describe "status" do
    it "exits 0 and says free when nobody holds NAME" do
      out, err, status = run_cli("status", @name)
      expect([err, status.exitstatus]).to eq(["", 0])
      expect(out).to eq("#{@name}: free (key #{key_for(@name)} on #{memcached.address})\n")
    end

    it "exits 1 and names the holder and the lease left when NAME is held" do
      lock = held_elsewhere(@name, ttl: 30)
      out, _, status = run_cli("status", @name)
      expect(status.exitstatus).to eq(1)
      expect(out).to match(/\A#{Regexp.escape(@name)}: held by #{Regexp.escape(holder)}, lease (\d+) s left \(key \S+ on \S+\)\n\z/)
      expect(out[/lease (\d+) s/, 1].to_i).to be_between(25, 32) # 30 + 2 s on the wire
      lock.unlock
    end

    it "handles a NAME that is hashed into its key, with options after the subcommand" do
      name = "nightly report #1"
      lock = Thread.new { MegaMutex::Lock.new(name).tap(&:lock) }.value
      out, _, status = run_cli(argv: [RbConfig.ruby, exe, "status", name, "--namespace", @namespace,
                                      "--servers", memcached.address])
      expect(status.exitstatus).to eq(1)
      expect(out).to include("held by #{MegaMutex.get_current_lock(name)}", key_for(name))
      lock.unlock
    end

    it "exits 69 when memcached cannot be reached" do
      _, err, status = run_cli("--servers", "127.0.0.1:#{MemcachedServer.free_port}", "status", @name, within: 10)
      expect(status.exitstatus).to eq(69)
      expect(err).to start_with("mega_mutex: cannot use memcached")
    end
  end

  describe "release --force" do
    it "removes a lock whoever holds it, naming the former holder" do
      lock = held_elsewhere(@name)
      token = holder
      out, _, status = run_cli("release", @name, "--force")
      expect([out, status.exitstatus]).to eq(["#{@name}: released (was held by #{token})\n", 0])
      expect(holder).to be_nil
      expect(lock.unlock).to be(false)
    end

    it "says so when there was nothing to release" do
      out, _, status = run_cli("release", "--force", @name)
      expect([out, status.exitstatus]).to eq(["#{@name}: was not held, nothing to release\n", 0])
    end

    it "exits 69 when memcached cannot be reached" do
      _, _, status = run_cli("--servers", "127.0.0.1:#{MemcachedServer.free_port}", "release", @name, "--force",
                             within: 10)
      expect(status.exitstatus).to eq(69)
    end
  end
end
