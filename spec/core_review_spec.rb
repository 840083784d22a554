# frozen_string_literal: true

require "spec_helper"
require_relative "support/core_review_helpers"
require_relative "support/interrupt_points"
require_relative "support/core_review_scheduler"
require_relative "support/quorum_servers"

# The lock core's hostile review (2026-12-02): each example is a path by
# which a lock was granted twice, or left held by nobody, or held by nobody
# while its holder was told it held it. Each failed before its fix.
RSpec.describe "lock core review" do
  include CoreReviewHelpers
  include InterruptPoints

  shared_context "the memory backend" do
    before do
      MegaMutex.configure { |c| c.backend = :memory }
      MegaMutex::MemoryStore.reset!
    end

    after { MegaMutex::MemoryStore.reset! }
  end

  describe "a child forked from C (neither Process._fork nor Process.daemon saw it)" do
    it "never releases the lock its parent holds, through unlock or the clean-up it is handed to" do
      lock = MegaMutex::Lock.new("raw-fork")
      lock.lock
      mine = MegaMutex.get_current_lock("raw-fork")
      report = in_raw_fork do
        said = []
        said << (begin
          "unlock=#{lock.unlock.inspect}"
        rescue MegaMutex::Error => e
          "unlock raised #{e.class}"
        end)
        # Anything that makes a client of the child's own notices the fork.
        2.times do
          MegaMutex.with_distributed_mutex("raw-fork-other") { nil }
        rescue MegaMutex::Error => e
          said << "other raised #{e.class}"
        end
        # The clean-up (when it was handed the parent's lock) runs 0.2 s later.
        gone = begin
          wait_for(within: 1.5, message: "the parent's lock to vanish") { MegaMutex.get_current_lock("raw-fork").nil? }
        rescue RuntimeError
          false
        end
        said << "parent's lock gone in the child's eyes: #{gone}"
        said.join("; ")
      end
      expect(report).not_to be_nil
      expect(MegaMutex.get_current_lock("raw-fork")).to eq(mine), "the child (#{report}) removed the lock its parent holds"
      expect(lock.unlock).to be(true)
    end

    it "never releases the lock its parent holds when the block it forked in ends in the child" do
      reader, writer = IO.pipe
      pid = nil
      mine = nil
      left_with = begin
        MegaMutex.with_distributed_mutex("raw-fork-block") do
          mine = MegaMutex.get_current_lock("raw-fork-block")
          pid = CoreReviewHelpers::RAW_FORK.call
          if pid.positive?
            writer.close
            ready = reader.wait_readable(20)
            report = ready ? reader.read : nil
            Process.kill(:KILL, pid) unless ready
            Process.wait(pid)
            expect(report).not_to be_nil
            expect(MegaMutex.get_current_lock("raw-fork-block")).to eq(mine),
                                                                   "the child (#{report}) removed the lock its parent holds"
          end
          :done
        end
      rescue Exception => e # rubocop:disable Lint/RescueException -- the child reports it
        raise unless pid&.zero?

        e.class
      end
      if pid.zero? # the child, out of the block its parent is still in
        2.times do
          MegaMutex.with_distributed_mutex("raw-fork-block-other") { nil }
        rescue MegaMutex::Error
          nil
        end
        gone = begin
          wait_for(within: 1.5) { MegaMutex.get_current_lock("raw-fork-block").nil? }
        rescue RuntimeError
          false
        end
        writer.write("left the block with #{left_with.inspect}; parent's lock gone in the child's eyes: #{gone}")
        writer.close
        Process.exit!(0)
      end
      expect(left_with).to eq(:done)
    ensure
      reader&.close
    end
  end

  describe "an interrupt at every point of Lock#unlock" do
    # The caller's `ensure lock.unlock` ran: an interrupt landing inside it,
    # before its interrupt mask, left the lock held - and renewed - for as
    # long as the process lived, with nobody holding it.
    it "never leaves the lock held: unlock gives it back before the interrupt goes on" do
      interrupter = InterruptPoints::Interrupter.new(Thread.current)
      leaked = []
      (1..).each do |k|
        lock = MegaMutex::Lock.new("unlock-points")
        lock.lock
        fired = false
        trace = trace_at(k, Thread.current) do
          fired = true
          interrupter.interrupt_now
        end
        delivered = false
        begin
          trace.enable { lock.unlock }
        rescue InterruptPoints::Interrupted
          delivered = true
        ensure
          trace.disable
        end
        break unless fired
        raise "the interrupt sent at #{@point} was swallowed" unless delivered

        if lock.owned? || MegaMutex.get_current_lock("unlock-points")
          leaked << "#{k}: #{@point}"
          lock.unlock while lock.owned?
          MegaMutex.pool.with { |c| c._force_release(key_for("unlock-points")) }
        end
      end
      expect(leaked).to eq([])
    ensure
      interrupter&.stop
    end
  end

  describe "Thread#kill at every point" do
    include_context "the memory backend"

    # Runs `call` in a thread killed at its k-th event in lib/ (the kill is
    # sent from another thread while this one waits, so it lands right
    # there, or at the next point Ruby checks); false once k is past the end.
    def killed_at(k, call)
      fired = false
      request = Queue.new
      done = Queue.new
      worker = nil
      killer = Thread.new do
        if request.pop
          worker.kill
          done << true
        end
      end
      worker = Thread.new do
        trace = trace_at(k, Thread.current) do
          fired = true
          Thread.handle_interrupt(Object => :never) do
            request << true
            done.pop
          end
        end
        trace.enable { call.call(MegaMutex::Lock.new("killed")) }
      end
      worker.join
      request << false unless fired
      killer.join
      [fired, @point]
    end

    {
      "lock, then unlock in an ensure" => lambda { |lock|
        lock.lock
        begin
          nil
        ensure
          lock.unlock
        end
      },
      "try_lock, then unlock in an ensure" => lambda { |lock|
        if lock.try_lock
          begin
            nil
          ensure
            lock.unlock
          end
        end
      },
      "synchronize" => ->(lock) { lock.synchronize { nil } }
    }.each do |name, call|
      it "#{name}: leaves nothing held" do
        leaked = []
        (1..).each do |k|
          fired, point = killed_at(k, call)
          break unless fired

          next if MegaMutex.get_current_lock("killed").nil?

          leaked << "#{k}: #{point}"
          MegaMutex::MemoryStore.reset!
        end
        expect(leaked).to eq([])
      end
    end
  end

  describe "a thread that hogs the GVL while a lease must be renewed" do
    # The GVL is held for 3.5 s by a C call (as an extension that forgets to
    # release it would), with lock_ttl 1: the lease must be renewed three
    # times meanwhile, by something that needs no GVL.
    def hold_through_a_hog(id)
      inside = Queue.new
      leave = Queue.new
      a_leaving = false
      a = Thread.new do
        MegaMutex.with_distributed_mutex(id) do |lock|
          inside << true
          leave.pop
          lost = lock.lost?
          a_leaving = true
          lost
        end
      end
      inside.pop
      b_saw_a_leaving = nil
      b = Thread.new do
        MegaMutex.with_distributed_mutex(id, timeout: nil) { b_saw_a_leaving = a_leaving }
      rescue MegaMutex::LockLostError
        nil # its own lease ran out under the hog too: what matters is when it got in
      end
      wait_for(message: "b waiting") { b.status == "sleep" }
      hog_gvl(3.5)
      leave << true
      a_lost = begin
        a.value
      rescue MegaMutex::LockLostError => e
        e
      end
      raise "b still waiting" unless b.join(10)

      [a_lost, b_saw_a_leaving]
    end

    it "backend :memory: the holder keeps its lease, and a waiter gets in only after its release" do
      MegaMutex.configure do |c|
        c.backend = :memory
        c.lock_ttl = 1
      end
      MegaMutex::MemoryStore.reset!
      a_lost, b_after_a = hold_through_a_hog("hog-memory")
      expect(a_lost).to be(false)
      expect(b_after_a).to be(true), "the waiter ran its block while the holder was still inside its own"
    ensure
      MegaMutex::MemoryStore.reset!
    end

    it "backend :quorum: the holder keeps its lease, and a waiter gets in only after its release" do
      MegaMutex.configure do |c|
        QuorumServers.configure(c)
        c.lock_ttl = 1
      end
      a_lost, b_after_a = hold_through_a_hog("hog-quorum")
      expect(a_lost).to be(false)
      expect(b_after_a).to be(true), "the waiter ran its block while the holder was still inside its own"
    end

    it "backend :memcached: the holder keeps its lease, and a waiter gets in only after its release" do
      MegaMutex.configure { |c| c.lock_ttl = 1 }
      a_lost, b_after_a = hold_through_a_hog("hog-memcached")
      expect(a_lost).to be(false)
      expect(b_after_a).to be(true), "the waiter ran its block while the holder was still inside its own"
    end
  end

  describe "a grant that reaches Ruby after its lease ran out (the GVL was hogged meanwhile)" do
    # The take succeeds in C, without the GVL; the thread then waits for the
    # GVL, which another thread holds for longer than the lease. The lease
    # it was granted has run out - and another process took the lock - by
    # the time it can say it holds it: it must not enter its block.
    it "backend :memcached: is not entered; the taker waits on and gets the lock once it is free" do
      id = "stale-grant"
      key = key_for(id)
      MegaMutex.pool.with { |c| expect(c._acquire(Object.new, key, "ghost:1:0", 1, 0, 0.002, 0.05)).to be(true) }
      script = <<~RUBY
        id = #{id.inspect}
        parent = #{Process.pid}
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
        until (MegaMutex.get_current_lock(id) || "").split(":")[1] == parent.to_s
          if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
            $stdout.write("T")
            exit 1
          end
          sleep 0.005
        end
        MegaMutex.with_distributed_mutex(id, timeout: 20) do
          $stdout.write("H")
          $stdout.flush
          $stdin.read
        end
      RUBY
      prelude = "$LOAD_PATH.unshift(#{File.join(SpecHelpers::ROOT, 'lib').inspect}); require 'mega_mutex'; " \
                "MegaMutex.configure { |c| c.memcache_servers = [#{memcached.address.inspect}]; c.namespace = #{@namespace.inspect} };"
      stdin, stdout, child = Open3.popen2(RbConfig.ruby, "-e", prelude + script)
      seen = nil
      b = Thread.new do
        MegaMutex.with_distributed_mutex(id, timeout: nil, ttl: 1) do |lock|
          seen = { holder: MegaMutex.get_current_lock(id), mine: lock.instance_variable_get(:@hold).token, lost: lock.lost? }
        end
      rescue MegaMutex::LockLostError
        nil
      end
      wait_for(message: "the taker polling in C") { b.status == "sleep" }
      hog_gvl_until_readable(stdout) # until the child holds the lock (or gives up: "T")
      stdin.close
      raise "the taker is still waiting" unless b.join(20)

      child.join
      expect(seen).not_to be_nil
      expect(seen[:lost]).to be(false)
      expect(seen[:holder]).to eq(seen[:mine]), "entered its block holding nothing: the lock was #{seen[:holder].inspect}'s"
    ensure
      stdin&.close unless stdin&.closed?
      stdout&.close
    end
  end

  describe "two fibers of one thread" do
    include_context "the memory backend"

    it "are two holders: a fiber scheduler's second fiber waits for the first one's release" do
      events = []
      Thread.new do
        Fiber.set_scheduler(CoreReviewScheduler.new)
        Fiber.schedule do
          MegaMutex.with_distributed_mutex("fibers") do
            events << :a_in
            sleep 0.05 # the scheduler runs the other fiber meanwhile
            events << :a_out
          end
        end
        Fiber.schedule do
          MegaMutex.with_distributed_mutex("fibers", timeout: 5) do
            events << :b_in
            events << :b_out
          end
        end
      end.join(20) || raise("the fibers did not finish")
      expect(events).to eq(%i[a_in a_out b_in b_out])
    end

    it "without a scheduler, the second fiber is refused instead of entering (a wait could never end)" do
      entered = []
      first = Fiber.new do
        MegaMutex.with_distributed_mutex("fibers") do
          entered << :first
          Fiber.yield
        end
      end
      first.resume
      second = Fiber.new do
        MegaMutex.with_distributed_mutex("fibers", timeout: 1) { entered << :second }
      rescue MegaMutex::Error => e
        e
      end
      expect(second.resume).to be_a(MegaMutex::DeadlockError)
      skip_if_free = Fiber.new { MegaMutex.with_distributed_mutex_if_free("fibers") { entered << :third } }
      expect(skip_if_free.resume).to be(false)
      first.resume
      expect(entered).to eq([:first])
      expect(MegaMutex.with_distributed_mutex_if_free("fibers") { entered << :after }).to be(true)
    end
  end

  describe "one Lock object shared by threads (a constant used like a Mutex)" do
    include_context "the memory backend"

    it "a block that waited for another thread's block gives the lock back when it ends" do
      lock = MegaMutex::Lock.new("shared-object", timeout: 5)
      inside = Queue.new
      leave = Queue.new
      first = Thread.new { lock.synchronize { inside << true; leave.pop } }
      inside.pop
      second = Thread.new { lock.synchronize { :second } }
      wait_for(message: "the second thread waiting") { second.status == "sleep" }
      leave << true
      expect(first.join(10)).to be_truthy
      expect(second.value).to eq(:second)
      expect(MegaMutex::MemoryStore.locks).to eq({}), "the lock stayed held (and renewed) after both blocks ended"
      expect(lock.owned?).to be(false)
    end

    it "an interrupt that cuts a grant's registration short, while another thread waits on the same Lock, undoes that grant" do
      MegaMutex.configure { |c| c.lock_ttl = 30 }
      lock = MegaMutex::Lock.new("shared-undo", timeout: 5)
      taker = nil
      paused = Queue.new
      go_on = Queue.new
      check = Queue.new
      trace = TracePoint.new(:call) do |tp|
        next unless Thread.current == taker && tp.method_id == :adopt

        trace.disable
        paused << true
        Thread.handle_interrupt(Object => :never) { go_on.pop } # the interrupt lands as adopt is entered
      end
      taker = Thread.new do
        outcome = begin
          trace.enable
          lock.lock
          :returned
        rescue InterruptPoints::Interrupted
          :interrupted
        end
        check.pop
        # This thread holds nothing now: it must not join a hold of its own.
        [outcome, MegaMutex::Lock.new("shared-undo").try_lock]
      end
      paused.pop # the grant is in the thread's registry, not yet adopted
      second = Thread.new do
        lock.lock ? :second_holds : :no # waits on the server: the taker holds it
      rescue MegaMutex::TimeoutError => e
        e
      end
      wait_for(message: "the second thread waiting") { second.status == "sleep" }
      taker.raise(InterruptPoints::Interrupted, "cut short")
      go_on << true
      expect(second.value).to eq(:second_holds), "the interrupted grant was left held (for its whole lease): #{second.value.inspect}"
      check << true
      expect(taker.value).to eq([:interrupted, false])
    ensure
      trace&.disable
      MegaMutex::Lock.holds.clear
    end

    it "4 threads x 25 blocks on one Lock (:memory, then :memcached): one inside at a time, none left held" do
      [:memory, :memcached].each { |backend| four_threads_on_one_lock(backend) }
    end

    def four_threads_on_one_lock(backend)
      MegaMutex.configure { |c| c.backend = backend }
      lock = MegaMutex::Lock.new("shared-object-4", timeout: 10)
      inside = 0
      most = 0
      threads = Array.new(4) do
        Thread.new do
          25.times do
            lock.synchronize do
              inside += 1
              most = [most, inside].max
              Thread.pass
              inside -= 1
            end
          end
        end
      end
      threads.each { |t| expect(t.value).to eq(25) }
      expect(most).to eq(1)
      expect(MegaMutex.get_current_lock("shared-object-4")).to be_nil
    end
  end
end
