# frozen_string_literal: true

require "timeout"

RSpec.describe "interrupts" do
  let(:holder) { held_elsewhere("held") }

  after { holder.unlock if holder.owned? }

  it "Timeout ends a wait promptly, takes nothing, and leaves the lock to its holder" do
    holder
    ran = false
    t0 = monotonic
    expect { Timeout.timeout(0.2) { MegaMutex.with_distributed_mutex("held") { ran = true } } }.to raise_error(Timeout::Error)
    expect(monotonic - t0).to be < 2.0
    expect(ran).to be(false)
    expect(MegaMutex.get_current_lock("held")).to eq(holder.holder)
    expect(MegaMutex::Lock.holds).to be_empty
  end

  it "Thread#raise ends a wait promptly" do
    holder
    waiter = Thread.new do
      Thread.current.report_on_exception = false
      MegaMutex.with_distributed_mutex("held") { :never }
    end
    wait_for(message: "waiter to block") { waiter.status == "sleep" }
    waiter.raise(RuntimeError, "stop waiting")
    wait_for(within: 2, message: "waiter to end") { !waiter.alive? }
    expect { waiter.value }.to raise_error(RuntimeError, "stop waiting")
  end

  it "Thread#kill ends a wait promptly" do
    holder
    waiter = Thread.new { MegaMutex.with_distributed_mutex("held") { :never } }
    wait_for(message: "waiter to block") { waiter.status == "sleep" }
    waiter.kill
    expect(waiter.join(2)).not_to be_nil
    expect(waiter.status).to be(false)
  end

  it "a Thread#raise under handle_interrupt(:never) waits without spinning and is delivered after" do
    holder
    cpu_before = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
    waiter = Thread.new do
      Thread.current.report_on_exception = false
      Thread.handle_interrupt(Object => :never) do
        MegaMutex.with_distributed_mutex("held") { :got_it }
      end
    end
    wait_for(message: "waiter to block") { waiter.status == "sleep" }
    waiter.raise(RuntimeError, "deferred")
    sleep 0.3 # let a spinning waiter show itself in CPU time
    cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) - cpu_before
    expect(cpu).to be < 0.25
    expect(waiter).to be_alive
    holder.unlock
    expect { waiter.value }.to raise_error(RuntimeError, "deferred")
    expect(MegaMutex.get_current_lock("held")).to be_nil
  end

  it "Ctrl-C (SIGINT) ends a waiting process promptly and the block never runs" do
    holder
    script = <<~'RUBY'
      begin
        MegaMutex.with_distributed_mutex("held") { puts "RAN" }
      rescue Interrupt
        puts "INTERRUPTED"
      end
    RUBY
    r, w = IO.pipe
    env = { "MEMCACHE_SERVERS" => memcached.address, "MM_NAMESPACE" => @namespace }
    prelude = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
              "MegaMutex.configure { |c| c.namespace = ENV['MM_NAMESPACE'] }; $stdout.sync = true; puts 'READY';"
    # A shell's background job starts with SIGINT ignored, which Ruby keeps:
    # give the child Ruby's own handler, as in a terminal.
    prelude = "trap('INT', 'DEFAULT'); #{prelude}"
    pid = Process.spawn(env, RbConfig.ruby, "-e", prelude + script, out: w)
    w.close
    expect(r.gets).to eq("READY\n")
    # The child is waiting once its failed attempts show up in memcached's stats.
    gets_before = memcached.stats["cmd_get"].to_i
    wait_for(message: "child to poll") { memcached.stats["cmd_get"].to_i > gets_before + 2 }
    Process.kill(:INT, pid)
    Timeout.timeout(5) { Process.wait(pid) }
    expect(r.read).to eq("INTERRUPTED\n")
  ensure
    r&.close
  end

  it "Timeout firing inside the block releases the lock" do
    expect { Timeout.timeout(0.05) { MegaMutex.with_distributed_mutex("slow") { sleep 5 } } }.to raise_error(Timeout::Error)
    expect(MegaMutex.get_current_lock("slow")).to be_nil
  end

  it "two thousand interrupts at random moments (free and contended keys) leave no lock behind and the connection in step" do
    ids = %w[free-a free-b]
    contended = held_elsewhere("contended")
    rng = Random.new(42)
    interrupted = Hash.new(0)
    2000.times do |i|
      id = i % 3 == 2 ? "contended" : ids[i % 2]
      begin
        Timeout.timeout(rng.rand * 0.0004) { MegaMutex.with_distributed_mutex(id) { Thread.pass } }
      rescue Timeout::Error
        interrupted[id == "contended" ? :contended : :free] += 1
      end
    end
    expect(interrupted[:contended]).to eq(666) # every wait on a held key was cut short
    expect(interrupted[:free]).to be > 20      # and many take/block/release cycles were too
    # A take cut short after its add went out, whose reply did not come
    # within the 20 ms grace (a loaded machine), has an unknown outcome: it
    # is handed to the clean-up, which removes it as soon as the server
    # answers (README, "Requests are bounded") - not at once, and never later
    # than a few RETRY periods. A lock kept for its lease would still fail here.
    wait_for(within: 3, message: "no lock left on the free keys") { ids.map { |id| MegaMutex.get_current_lock(id) } == [nil, nil] }
    expect(MegaMutex.get_current_lock("contended")).to eq(contended.holder)
    expect(MegaMutex::Lock.holds).to be_empty
    # Every pooled connection still answers correctly.
    results = Array.new(4) { |n| Thread.new { MegaMutex.with_distributed_mutex("after-#{n}", timeout: 1) { n } } }.map(&:value)
    expect(results).to eq([0, 1, 2, 3])
    contended.unlock
  end
end
