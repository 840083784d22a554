# frozen_string_literal: true

require "io/wait"
require "json"
require "tmpdir"

# Many processes, one id: the distributed mutex must make them take turns.
# Children are either spawned (fresh Ruby processes, run_ruby) or forked from
# this one; forked children always leave with exit!, so they never run this
# process's at_exit hooks (which would stop the suite's memcached).
RSpec.describe "MegaMutex across processes" do
  include MegaMutex

  # Forks a child that runs the block and sends back its value (Marshal) on a
  # pipe. @return [Array(Integer, IO)] pid and the reading end
  def fork_with_result
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      code = 0
      payload = begin
        [:ok, yield]
      rescue Exception => e
        code = 1
        [:error, "#{e.class}: #{e.message}\n  #{Array(e.backtrace).first(8).join("\n  ")}"]
      end
      writer.write(Marshal.dump(payload))
      writer.close
      exit!(code)
    end
    writer.close
    forked << pid
    [pid, reader]
  end

  # Children forked by this example and not reaped yet (so their pids cannot
  # have been reused): an example that fails half-way leaves none behind.
  def forked
    @forked ||= []
  end

  after do
    forked.each do |pid|
      Process.kill(:KILL, pid)
      Process.waitpid(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  # Reads everything `reader` gets until EOF, failing after `within` seconds
  # (the after hook then kills the child).
  def read_all(reader, pid, within: 30)
    deadline = monotonic + within
    data = +""
    loop do
      left = deadline - monotonic
      raise "child #{pid} sent nothing for #{within}s" if left <= 0 || reader.wait_readable(left).nil?

      chunk = reader.read_nonblock(65_536, exception: false)
      break if chunk.nil?

      data << chunk unless chunk == :wait_readable
    end
    data
  end

  # Waits for a child made by fork_with_result; returns the block's value.
  def child_result(pid, reader)
    data = read_all(reader, pid)
    reader.close
    _, status = Process.wait2(pid)
    forked.delete(pid)
    raise "child #{pid} died without a result (#{status.inspect})" if data.empty?

    kind, value = Marshal.load(data)
    raise "child #{pid} failed: #{value}" unless kind == :ok
    raise "child #{pid} exited with #{status.inspect}" unless status.success?

    value
  end

  describe "the widget check, in 6 spawned processes" do
    # Each process makes widgets until there are `target` of them, checking
    # and incrementing a counter kept in memcached (a plain get and set: racy
    # on its own), inside with_distributed_mutex("widgets").
    let(:script) do
      <<~'RUBY'
        require File.join(Dir.pwd, "spec/support/memcached_server")
        include MegaMutex
        store = MemcachedServer.new(port: Integer(ENV.fetch("MC_PORT")))
        key = ENV.fetch("COUNTER_KEY")
        target = Integer(ENV.fetch("TARGET"))
        File.write(ENV.fetch("READY"), "")
        sleep 0.001 until File.exist?(ENV.fetch("GO"))
        made = 0
        Integer(ENV.fetch("ROUNDS")).times do
          with_distributed_mutex("widgets", timeout: 30) do
            n = Integer(store.get(key))
            sleep 0.002 # the time it takes to make a widget: widens the race
            if n < target
              store.command("set #{key} 0 0 #{(n + 1).to_s.bytesize}\r\n#{n + 1}")
              made += 1
            end
          end
        end
        puts "made=#{made}"
      RUBY
    end

    it "makes exactly the target number of widgets, never more" do
      processes = 6
      rounds = 8
      target = 30
      counter_key = "#{MegaMutex.configuration.namespace}:widget-count"
      expect(memcached.command("set #{counter_key} 0 0 1\r\n0")).to eq("STORED\r\n")

      Dir.mktmpdir("mm-widgets") do |dir|
        go = File.join(dir, "go")
        runs = Array.new(processes) do |i|
          env = { "MC_PORT" => memcached.port.to_s, "COUNTER_KEY" => counter_key, "TARGET" => target.to_s,
                  "ROUNDS" => rounds.to_s, "READY" => File.join(dir, "ready-#{i}"), "GO" => go }
          Thread.new { run_ruby(script, env: env) }
        end
        # Start them together, once every process is loaded and waiting.
        wait_for(within: 30, message: "all processes to be ready") do
          Dir.glob(File.join(dir, "ready-*")).size == processes || runs.none?(&:alive?)
        end
        File.write(go, "")
        results = runs.map(&:value)

        results.each do |out, err, status|
          expect(status).to be_success, "child failed (#{status.inspect}):\n#{out}\n#{err}"
        end
        made = results.map { |out, _, _| Integer(out[/^made=(\d+)$/, 1]) }
        expect(made.sum).to eq(target)
        expect(Integer(memcached.get(counter_key))).to eq(target)
        expect(MegaMutex.get_current_lock("widgets")).to be_nil
      end
    end
  end

  describe "8 forked processes hammering one id" do
    it "never has two processes inside at once, and runs every one of the sections" do
      processes = 8
      rounds = 30
      Dir.mktmpdir("mm-hammer") do |dir|
        log_path = File.join(dir, "log")
        File.write(log_path, "")
        go_reader, go_writer = IO.pipe
        children = Array.new(processes) do
          fork_with_result do
            go_writer.close
            go_reader.sysread(1) # one byte per child: all start together
            # O_APPEND: each line is one write(2), and the file's order is the
            # order in which the writes happened, across processes.
            File.open(log_path, File::WRONLY | File::APPEND) do |log|
              log.sync = true
              Array.new(rounds) do |i|
                with_distributed_mutex("hammer", timeout: 60) do
                  log.syswrite("enter #{Process.pid} #{i}\n")
                  i.even? ? sleep(0.0005) : Thread.pass
                  log.syswrite("exit #{Process.pid} #{i}\n")
                  i
                end
              end
            end
          end
        end
        go_reader.close
        go_writer.write("x" * processes)
        go_writer.close
        pids = children.map(&:first)
        values = children.map { |pid, reader| child_result(pid, reader) }

        expect(values).to all(eq((0...rounds).to_a))
        lines = File.readlines(log_path, chomp: true).map(&:split)
        expect(lines.size).to eq(2 * processes * rounds)
        # Strictly enter, exit, enter, exit ...; each exit closes the section
        # just entered: any overlap puts two enters in a row.
        overlaps = lines.each_slice(2).reject do |(e, pid, i), (x, pid2, i2)|
          e == "enter" && x == "exit" && pid == pid2 && i == i2
        end
        expect(overlaps).to eq([])
        sections = lines.select { |kind, _, _| kind == "enter" }.map { |_, pid, i| [Integer(pid), Integer(i)] }
        expect(sections.sort).to eq(pids.product((0...rounds).to_a).sort)
        expect(MegaMutex.get_current_lock("hammer")).to be_nil
      end
    end
  end

  describe "fork" do
    it "does not let a child reenter a lock the parent held when it forked, and lets it have the lock once released" do
      held = MegaMutex::Lock.new("held-across-fork", timeout: 5)
      held.lock
      token = MegaMutex.get_current_lock("held-across-fork")
      expect(token).not_to be_nil

      go_reader, go_writer = IO.pipe
      first_reader, first_writer = IO.pipe
      pid, reader = fork_with_result do
        go_writer.close
        first_reader.close
        while_parent_holds = {
          owned: held.owned?,
          try_lock: MegaMutex::Lock.new("held-across-fork").try_lock,
          same_lock_object: begin
            held.lock(timeout: 0)
          rescue MegaMutex::TimeoutError
            :timeout
          end,
          block: begin
            with_distributed_mutex("held-across-fork", timeout: 0) { :ran }
          rescue MegaMutex::TimeoutError
            :timeout
          end,
          unlock: held.unlock,
          holder: MegaMutex.get_current_lock("held-across-fork")
        }
        first_writer.write(Marshal.dump(while_parent_holds))
        first_writer.close
        raise "parent never released" unless go_reader.sysread(1) == "r"

        {
          block: with_distributed_mutex("held-across-fork", timeout: 5) { MegaMutex.get_current_lock("held-across-fork") },
          after: MegaMutex.get_current_lock("held-across-fork")
        }
      end
      go_reader.close
      first_writer.close

      while_parent_holds = Marshal.load(read_all(first_reader, pid))
      first_reader.close
      expect(while_parent_holds).to eq(owned: false, try_lock: false, same_lock_object: :timeout,
                                       block: :timeout, unlock: false, holder: token)
      # The child's attempts (and its unlock of the inherited Lock object)
      # left the parent's lock alone.
      expect(held).to be_owned
      expect(MegaMutex.get_current_lock("held-across-fork")).to eq(token)

      expect(held.unlock).to be(true)
      go_writer.write("r")
      go_writer.close
      after_release = child_result(pid, reader)
      expect(after_release[:block]).to be_a(String)
      expect(after_release[:block]).not_to eq(token)
      expect(after_release[:after]).to be_nil

      # The parent's connection, used before the fork, still works.
      expect(with_distributed_mutex("held-across-fork", timeout: 0) { :parent_again }).to eq(:parent_again)
    end

    it "gives the child its own connection, so parent and child can both use MegaMutex at the same time" do
      held = MegaMutex::Lock.new("kept-by-parent")
      held.lock
      token = MegaMutex.get_current_lock("kept-by-parent")
      # Connections the parent opened and keeps in its pool.
      expect(with_distributed_mutex("parent-side") { :warm }).to eq(:warm)

      pid, reader = fork_with_result do
        values = Array.new(100) do |i|
          with_distributed_mutex("child-side", timeout: 5) { [i, MegaMutex.get_current_lock("kept-by-parent")] }
        end
        stolen = MegaMutex::Lock.new("kept-by-parent").try_lock
        GC.start # lets the parent's abandoned clients be freed here, in the child
        { values: values, stolen: stolen, child_side_after: MegaMutex.get_current_lock("child-side") }
      end

      # The parent keeps using its own (pre-fork) connection meanwhile.
      parent_values = []
      loop do
        i = parent_values.size
        parent_values << with_distributed_mutex("parent-side", timeout: 5) { [i, MegaMutex.get_current_lock("kept-by-parent")] }
        break if parent_values.size >= 5 && reader.wait_readable(0)
        break if parent_values.size >= 5_000
      end
      child = child_result(pid, reader)

      expect(child[:values]).to eq(Array.new(100) { |i| [i, token] })
      expect(child[:stolen]).to be(false)
      expect(child[:child_side_after]).to be_nil
      expect(parent_values).to eq(Array.new(parent_values.size) { |i| [i, token] })

      # After the child is gone, the parent's lock and connection are intact.
      expect(held).to be_owned
      expect(MegaMutex.get_current_lock("kept-by-parent")).to eq(token)
      expect(held.unlock).to be(true)
      expect(MegaMutex.get_current_lock("kept-by-parent")).to be_nil
      expect(with_distributed_mutex("parent-side", timeout: 0) { :again }).to eq(:again)
    end

    it "keeps the parent's connection open and working after children exit normally (running finalizers)" do
      # A separate Ruby process, so that its forked children can exit the
      # ordinary way, freeing every object they inherited, without running
      # this suite's at_exit hooks; and a private memcached, so that the
      # connections it accepts can be counted.
      script = <<~'RUBY'
        require "json"
        require File.join(Dir.pwd, "spec/support/memcached_server")
        include MegaMutex
        server = MemcachedServer.new(port: Integer(ENV.fetch("MC_PORT")))
        accepted = -> { Integer(server.stats.fetch("total_connections")) }
        held = MegaMutex::Lock.new("kept-across-exits")
        held.lock
        token = MegaMutex.get_current_lock("kept-across-exits")
        with_distributed_mutex("warm") { :warm }
        before = accepted.call

        # A child that never uses MegaMutex: its exit frees the parent's
        # connections it inherited, untouched, in its copy of the pool.
        quiet = fork { exit 0 }
        _, quiet_status = Process.wait2(quiet)

        # A child that locks with its own connection, then exits normally.
        busy = fork do
          ok = Array.new(20) { |i| with_distributed_mutex("child-id", timeout: 5) { i } } == (0...20).to_a
          stolen = MegaMutex::Lock.new("kept-across-exits").try_lock
          exit(ok && !stolen ? 0 : 3)
        end
        _, busy_status = Process.wait2(busy)

        result = { "quiet_exit" => quiet_status.exitstatus, "busy_exit" => busy_status.exitstatus }
        begin
          result["holder"] = MegaMutex.get_current_lock("kept-across-exits") == token
          result["owned"] = held.owned?
          result["unlock"] = held.unlock
          result["after"] = MegaMutex.get_current_lock("kept-across-exits")
          result["again"] = with_distributed_mutex("warm", timeout: 0) { "again" }
        rescue MegaMutex::Error => e
          result["error"] = "#{e.class}: #{e.message}"
        end
        # Accepted since `before`: the busy child's connection and this stats
        # request's own; one more would be the parent reconnecting because a
        # child's exit closed the connection it shares with the parent.
        result["accepted"] = accepted.call - before
        puts JSON.generate(result)
      RUBY
      server = MemcachedServer.new.start
      begin
        out, err, status = run_ruby(script, env: { "MEMCACHE_SERVERS" => server.address, "MC_PORT" => server.port.to_s })
      ensure
        server.stop
      end

      expect(status).to be_success, "script failed (#{status.inspect}):\n#{out}\n#{err}"
      expect(JSON.parse(out.lines.last)).to eq("quiet_exit" => 0, "busy_exit" => 0, "holder" => true, "owned" => true,
                                               "unlock" => true, "after" => nil, "again" => "again", "accepted" => 2)
    end
  end
end
