# frozen_string_literal: true

# Lock#lock and Lock#try_lock cut short by an interrupt (issue: no lock
# granted twice, point 4): a call that raises must leave nothing held.
#
# Random Timeouts rarely land inside a call that takes microseconds, so the
# interrupt is sent at every point instead: a TracePoint counts the events
# (lines, calls, returns, C calls) the call makes in lib/, and at the k-th
# one has another thread Thread#raise this one, for k = 1, 2, ... until the
# call finishes before k. The interrupt is then delivered as any interrupt
# is - at the next point Ruby checks, and not while interrupts are deferred -
# so this is what a Timeout or Ctrl-C arriving at that moment would do. An
# interrupt delivered after the call returned finds the caller holding the
# lock it was given (its own ensure gives it back), as with Ruby's Mutex.
RSpec.describe "Lock#lock and #try_lock interrupted at every point" do
  LIB = File.join(SpecHelpers::ROOT, "lib")
  Interrupted = Class.new(StandardError)

  # Raises into `target` from a thread of its own, waiting until it is queued.
  class Interrupter
    def initialize(target)
      @requests = Queue.new
      @done = Queue.new
      @thread = Thread.new do
        while (error = @requests.pop)
          target.raise(error)
          @done << true
        end
      end
    end

    # Called in the target thread: returns once the interrupt is pending.
    def interrupt_now
      Thread.handle_interrupt(Object => :never) do
        @requests << Interrupted.new("interrupted")
        @done.pop
      end
    end

    def stop
      @requests << nil
      @thread.join
    end
  end

  # Calls lock.lock (or try_lock) with an interrupt at its k-th event.
  # @return [Array(Boolean, Boolean, Boolean)] fired?, raised inside the call?, leaked?
  def interrupted_call(lock, kind, k, interrupter)
    main = Thread.current
    count = 0
    fired = false
    trace = TracePoint.new(:line, :call, :return, :c_call, :c_return, :b_call, :b_return) do |tp|
      next unless Thread.current == main && tp.path&.start_with?(LIB)

      count += 1
      next unless count == k

      fired = true
      @where = "#{tp.event} #{tp.method_id} #{File.basename(tp.path)}:#{tp.lineno}"
      interrupter.interrupt_now
    end
    returned = false
    begin
      trace.enable do
        if kind == :lock
          lock.lock(timeout: 1)
        else
          lock.try_lock
        end
        returned = true # nothing between the call's return and here lets an interrupt in
      end
    rescue Interrupted
      nil
    ensure
      trace.disable
    end
    inside = fired && !returned
    leaked = inside && lock.owned?
    lock.unlock while lock.owned?
    [fired, inside, leaked]
  end

  # Runs the call with an interrupt at every point; returns the points hit
  # inside the call and the ones that left the lock held.
  def every_point(kind, id)
    interrupter = Interrupter.new(Thread.current)
    inside = []
    leaked = []
    (1..).each do |k|
      lock = MegaMutex::Lock.new(id)
      fired, was_inside, leak = interrupted_call(lock, kind, k, interrupter)
      break unless fired

      inside << k if was_inside
      leaked << "#{k}: #{@where}" if leak
      expect(MegaMutex.get_current_lock(id)).to be_nil, "interrupt at event #{k} left #{id} held on the server"
    end
    [inside, leaked]
  ensure
    interrupter&.stop
  end

  shared_examples "no lock kept by an interrupted call" do
    it "Lock#lock: an interrupt at any point inside the call leaves nothing held" do
      inside, leaked = every_point(:lock, "every-lock")
      expect(inside.size).to be > 10
      expect(leaked).to eq([])
      expect(MegaMutex::Lock.holds).to be_empty
    end

    it "Lock#try_lock: an interrupt at any point inside the call leaves nothing held" do
      inside, leaked = every_point(:try_lock, "every-try")
      expect(inside.size).to be > 10
      expect(leaked).to eq([])
    end

    it "an interrupt inside a nested (reentrant) Lock#lock keeps the outer hold" do
      outer = MegaMutex::Lock.new("nested").tap(&:lock)
      token = outer.holder
      interrupter = Interrupter.new(Thread.current)
      (1..).each do |k|
        fired, = interrupted_call(MegaMutex::Lock.new("nested"), :lock, k, interrupter)
        break unless fired

        expect(outer).to be_owned
        expect(MegaMutex.get_current_lock("nested")).to eq(token)
      end
      interrupter.stop
      expect(outer.unlock).to be(true)
      expect(MegaMutex.get_current_lock("nested")).to be_nil
    end
  end

  context "with memcached" do
    include_examples "no lock kept by an interrupted call"
  end

  context "with the memory backend" do
    before do
      MegaMutex::MemoryStore.reset!
      MegaMutex.configure { |c| c.backend = :memory }
    end

    include_examples "no lock kept by an interrupted call"
  end
end
