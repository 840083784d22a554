# frozen_string_literal: true

module MegaMutex
  class CLI
    # The waiting line of `mega_mutex exec`, on a terminal only: how long it
    # has waited and who holds the lock, redrawn in place every
    # {LIVE_LINE_DELAY} s and cleared once the wait ends.
    # @api private
    class LiveLine
      # @param io [IO] the terminal (stderr)
      # @param name [String] the lock's NAME
      # @param timeout [Numeric, nil] the wait limit, nil for none
      def initialize(io, name, timeout)
        @io = io
        @name = name
        @timeout = timeout
        @mutex = Mutex.new
        @wake = ConditionVariable.new
        @stopped = false
        @drawn = false
        @started = monotonic
        @thread = Thread.new { loop_draw }
        @thread.report_on_exception = false
      end

      # Stops redrawing and clears the line; safe to call twice.
      # @return [void]
      def stop
        @mutex.synchronize do
          return if @stopped

          @stopped = true
          @wake.signal
        end
        @thread.join(2)
        @mutex.synchronize { @io.write("\r\e[K") if @drawn }
        @drawn = false
      rescue IOError, SystemCallError
        nil
      end

      private

      def loop_draw
        holder = nil
        holder_at = nil
        loop do
          @mutex.synchronize do
            @wake.wait(@mutex, LIVE_LINE_DELAY)
            return if @stopped
          end
          if holder_at.nil? || monotonic - holder_at >= LIVE_LINE_HOLDER_EVERY
            holder = begin
              MegaMutex.get_current_lock(@name)
            rescue Error
              holder
            end
            holder_at = monotonic
          end
          draw(holder)
        end
      end

      def draw(holder)
        waited = monotonic - @started
        limit = @timeout ? " of #{@timeout} s" : ""
        text = "#{PROGRAM}: waiting for #{@name}: #{format('%.1f', waited)} s#{limit}, held by #{holder || '(just released)'}"
        text = text[0, width - 1] if width > 1
        @mutex.synchronize do
          return if @stopped

          @io.write("\r#{text}\e[K")
          @drawn = true
        end
      end

      def width
        @width ||= begin
          require "io/console"
          @io.winsize[1]
        rescue StandardError
          0
        end
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
