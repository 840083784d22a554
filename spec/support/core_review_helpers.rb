# frozen_string_literal: true

require "fiddle"
require "io/nonblock"
require "io/wait"

# Tools for the lock core's hostile review (spec/core_review_*.rb): a thread
# that hogs the GVL, and a fork Ruby does not see.
module CoreReviewHelpers
  LIBC = Fiddle::Handle::DEFAULT

  # usleep(3) called WITH the GVL held, as a C extension that forgets to
  # release it would: no other Ruby thread runs meanwhile (C threads do).
  USLEEP_WITH_GVL = Fiddle::Function.new(LIBC["usleep"], [Fiddle::TYPE_INT], Fiddle::TYPE_INT, need_gvl: true)

  # read(2) of one byte called WITH the GVL held: blocks every Ruby thread
  # until another process writes to `fd`.
  READ_WITH_GVL = Fiddle::Function.new(LIBC["read"], [Fiddle::TYPE_INT, Fiddle::TYPE_VOIDP, Fiddle::TYPE_SIZE_T],
                                       Fiddle::TYPE_SSIZE_T, need_gvl: true)

  # fork(2) called from C: neither Process._fork nor Process.daemon see it,
  # so MegaMutex.pid is still the parent's in the child.
  RAW_FORK = Fiddle::Function.new(LIBC["fork"], [], Fiddle::TYPE_INT, need_gvl: true)

  # A TracePoint that yields at the k-th event `thread` makes in lib/ (a
  # line, call, return, C call or block), after noting where in @point.
  # @return [TracePoint] not enabled
  def trace_at(k, thread)
    count = 0
    TracePoint.new(:line, :call, :return, :c_call, :c_return, :b_call, :b_return) do |tp|
      next unless Thread.current == thread && tp.path&.start_with?(InterruptPoints::LIB)

      count += 1
      next unless count == k

      @point = "#{tp.event} #{tp.method_id} #{File.basename(tp.path)}:#{tp.lineno}"
      yield
    end
  end

  # Holds the GVL for `seconds` (by the wall clock).
  def hog_gvl(seconds)
    USLEEP_WITH_GVL.call((seconds * 1_000_000).to_i)
  end

  # Holds the GVL until a byte can be read from `io` (written by another process).
  # @return [Integer] read(2)'s result
  def hog_gvl_until_readable(io)
    io.nonblock = false # Ruby makes its pipes non-blocking
    buf = Fiddle::Pointer.malloc(1, Fiddle::RUBY_FREE)
    READ_WITH_GVL.call(io.fileno, buf, 1)
  end

  # Runs `block` in a child forked from C; returns what it wrote to its pipe
  # (nil if it did not finish within `within` seconds: it is then killed).
  def in_raw_fork(within: 20)
    reader, writer = IO.pipe
    pid = RAW_FORK.call
    if pid.zero?
      reader.close
      out = begin
        yield.to_s
      rescue Exception => e # rubocop:disable Lint/RescueException -- report anything to the parent
        "child raised #{e.class}: #{e.message}"
      end
      writer.write(out)
      writer.close
      Process.exit!(0) # no at_exit (RSpec's) in the child
    end
    raise "fork failed" if pid.negative?

    writer.close
    ready = reader.wait_readable(within)
    result = ready ? reader.read : nil
    unless ready
      Process.kill(:KILL, pid)
    end
    Process.wait(pid)
    result
  ensure
    reader&.close
  end
end
