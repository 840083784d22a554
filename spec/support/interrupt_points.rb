# frozen_string_literal: true

# An interrupt at every point of a call: for specs that check that a call
# cut short by Timeout, Thread#raise or Ctrl-C leaves nothing held.
#
# Random Timeouts rarely land inside a call that takes microseconds, so the
# interrupt is sent at every point instead: a TracePoint counts the events
# (lines, calls, returns, C calls, block calls) the call makes in lib/, and at
# the k-th one has another thread Thread#raise this one, for k = 1, 2, ...
# until the call finishes before k. The interrupt is then delivered as any
# interrupt is - at the next point Ruby checks, and not while interrupts are
# deferred - so this is what a Timeout or Ctrl-C arriving at that moment
# would do. An interrupt delivered after the call returned finds the caller
# holding the lock it was given (its own ensure gives it back), as with
# Ruby's Mutex.
#
# Include InterruptPoints in an example group:
#
#   include InterruptPoints
#   inside, leaked = every_point(:lock, "some-id") # or :try_lock
#   expect(leaked).to eq([])
module InterruptPoints
  # Events under this directory are counted (the gem's own code).
  LIB = File.expand_path("../../lib", __dir__)

  # What the interrupter raises.
  Interrupted = Class.new(StandardError)

  # Raises into `target` from a thread of its own, waiting until it is queued.
  class Interrupter
    # @param target [Thread] the thread to interrupt
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

    # Ends the interrupter's thread.
    def stop
      @requests << nil
      @thread.join
    end
  end

  # Calls lock.lock (try_lock, synchronize) with an interrupt at its k-th event.
  # @param lock [MegaMutex::Lock]
  # @param kind [Symbol] :lock, :try_lock or :synchronize (an empty block)
  # @param k [Integer] the event to interrupt at (1-based)
  # @param interrupter [Interrupter] one for the current thread
  # @param timeout [Numeric, nil] passed to lock
  # @return [Array(Boolean, Boolean, Boolean)] fired?, raised inside the call?, leaked?
  #   (@interrupt_point then says where the interrupt was sent)
  def interrupted_call(lock, kind, k, interrupter, timeout: 1)
    main = Thread.current
    count = 0
    fired = false
    trace = TracePoint.new(:line, :call, :return, :c_call, :c_return, :b_call, :b_return) do |tp|
      next unless Thread.current == main && tp.path&.start_with?(LIB)

      count += 1
      next unless count == k

      fired = true
      @interrupt_point = "#{tp.event} #{tp.method_id} #{File.basename(tp.path)}:#{tp.lineno}"
      interrupter.interrupt_now
    end
    returned = false
    delivered = false
    begin
      trace.enable do
        case kind
        when :lock then lock.lock(timeout: timeout)
        when :try_lock then lock.try_lock
        else lock.synchronize(timeout: timeout) { nil }
        end
        returned = true # nothing between the call's return and here lets an interrupt in
      end
    rescue Interrupted
      delivered = true
    ensure
      trace.disable
    end
    # Delivered inside the call or just after it, never lost: a rescue in
    # the gem's code (or a `defined?`, which rescues what its expression
    # raises) must not swallow someone else's interrupt.
    raise "the interrupt sent at #{@interrupt_point} was swallowed: never delivered" if fired && !delivered
    # Lock#lock and #try_lock are entered through C (lock_entry.c), which
    # returns without an interrupt check: an interrupt either comes out of
    # the call with nothing held, or is delivered after `returned = true`.
    inside = fired && !returned
    # synchronize gives back what it took however it ends: nothing may be
    # held after it, whether the interrupt came out of it or not.
    leaked = (inside || kind == :synchronize) && lock.owned?
    lock.unlock while lock.owned?
    [fired, inside, leaked]
  end

  # Runs lock.lock (or try_lock) on a fresh Lock for `id` with an interrupt
  # at every point, checking after each that nothing is left held; yields
  # each k to an optional block (for checks of its own).
  # @return [Array(Array<Integer>, Array<String>)] the points hit inside the
  #   call, and those that left the lock held ("k: event method file:line")
  def every_point(kind, id)
    interrupter = Interrupter.new(Thread.current)
    inside = []
    leaked = []
    (1..).each do |k|
      lock = MegaMutex::Lock.new(id)
      fired, was_inside, leak = interrupted_call(lock, kind, k, interrupter)
      break unless fired

      inside << k if was_inside
      leaked << "#{k}: #{@interrupt_point}" if leak
      expect(MegaMutex.get_current_lock(id)).to be_nil, "interrupt at event #{k} (#{@interrupt_point}) left #{id} held in the store"
      yield k if block_given?
    end
    [inside, leaked]
  ensure
    interrupter&.stop
  end
end
