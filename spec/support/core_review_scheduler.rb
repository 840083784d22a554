# frozen_string_literal: true

# The smallest Fiber scheduler that runs what the fiber specs of
# spec/core_review_spec.rb need - Kernel#sleep, and Mutex/Queue waits (block
# and unblock, from any thread) - as a server's scheduler (async, Falcon)
# would: a fiber that sleeps or waits lets the others run. Fibers are made
# (Fiber.schedule) and resumed from the thread's root fiber only.
class CoreReviewScheduler
  def initialize
    @waiting = {} # Fiber => wake-up time (Float::INFINITY: until unblocked)
    @woken = []
    @lock = Thread::Mutex.new
    @reader, @writer = IO.pipe
  end

  # @return [Fiber] started at once, until it first waits
  def fiber(&block)
    fiber = Fiber.new(blocking: false, &block)
    fiber.resume
    fiber
  end

  def kernel_sleep(duration = nil)
    wait_until(duration ? now + duration : Float::INFINITY)
  end

  def block(_blocker, timeout = nil)
    wait_until(timeout ? now + timeout : Float::INFINITY)
  end

  def unblock(_blocker, fiber)
    @lock.synchronize { @woken << fiber }
    @writer.write_nonblock(".", exception: false)
  end

  def io_wait(_io, _events, _timeout)
    raise NotImplementedError, "CoreReviewScheduler does not wait on I/O"
  end

  # Runs every fiber until none is left waiting (called as the thread ends).
  def close
    until @waiting.empty?
      @lock.synchronize { @woken.each { |f| @waiting[f] = 0 if @waiting.key?(f) }.clear }
      due = @waiting.select { |_, at| at <= now }.keys
      if due.empty?
        next_at = @waiting.values.min
        @reader.wait_readable(next_at.infinite? ? 1 : [next_at - now, 0].max)
        @reader.read_nonblock(64, exception: false)
        next
      end
      due.each do |f|
        @waiting.delete(f)
        f.resume if f.alive?
      end
    end
  ensure
    @reader.close
    @writer.close
  end

  private

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def wait_until(time)
    @waiting[Fiber.current] = time
    Fiber.yield
  end
end
