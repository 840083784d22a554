# frozen_string_literal: true

require "io/wait"

# Helpers of the contract suite (included by "a MegaMutex backend").
module ContractHelpers
  # An owner token: host, the holder's pid (captured), 64 random bits in hex.
  TOKEN = /\A[\x21-\x7e]+:(\d+):\h{16}\z/.freeze

  # A lock held by a thread of its own, through with_distributed_mutex, until
  # #release: the holder a test waits on, times out on, or interrupts against.
  # Taken and given back in its own thread (no cross-thread unlock).
  class Holder
    # @return [String] the holder's token, read from the store while held
    attr_reader :token
    # @return [MegaMutex::Lock] the lock its block was given
    attr_reader :lock
    # @return [Thread]
    attr_reader :thread

    def initialize(id, **options)
      taken = Queue.new
      @go = Queue.new
      @thread = Thread.new do
        Thread.current.report_on_exception = false
        MegaMutex.with_distributed_mutex(id, **options) do |lock|
          taken << lock
          @go.pop
        end
      end
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
      sleep 0.001 while taken.empty? && @thread.alive? && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      @thread.value unless @thread.alive? # raises what the thread raised
      raise "holder of #{id.inspect} did not get the lock in 30 s" if taken.empty?

      @lock = taken.pop
      @token = @lock.holder
    end

    # Lets the holder's block finish.
    # @return [Object] the block's value (raises what the block raised)
    def release(within: 10)
      @go << :release
      raise "holder did not finish within #{within}s" unless @thread.join(within)

      @thread.value
    end

    # @return [Boolean] true until released
    def holding?
      @thread.alive?
    end
  end

  # @return [Holder] a lock on `id` held by another thread until #release
  def hold_elsewhere(id, **options)
    Holder.new(id, **options)
  end

  # Monotonic clock in nanoseconds: one clock for every thread and process
  # of the machine.
  def clock_ns
    Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  end

  # Pairs of [enter, exit] that overlap, once sorted by entry: [] when each
  # section began after the one before it ended.
  # @param intervals [Array<Array(Integer, Integer)>]
  # @return [Array<Array(Array, Array)>]
  def overlapping(intervals)
    intervals.sort.each_cons(2).reject { |(_, exit_a), (enter_b, _)| enter_b > exit_a }
  end

  # The thread's value, failing (instead of hanging) after `within` seconds.
  def value_of(thread, within: 10)
    raise "thread still running after #{within}s" unless thread.join(within)

    thread.value
  end

  # Forks a child that runs the block and sends its value back (Marshal) on
  # a pipe. The child leaves with exit!, so it runs none of this process's
  # at_exit hooks. @return [Array(Integer, IO)] pid and the reading end
  def fork_child
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      code = 0
      payload = begin
        [:ok, yield]
      rescue Exception => e # rubocop:disable Lint/RescueException -- reported to the parent
        code = 1
        [:error, "#{e.class}: #{e.message}\n  #{Array(e.backtrace).first(8).join("\n  ")}"]
      end
      writer.write(Marshal.dump(payload))
      writer.close
      exit!(code)
    end
    writer.close
    (@contract_children ||= []) << pid
    [pid, reader]
  end

  # Waits for a child made by fork_child; returns the block's value.
  def child_value(pid, reader, within: 60)
    deadline = monotonic + within
    data = +""
    loop do
      left = deadline - monotonic
      raise "child #{pid} sent nothing for #{within}s" if left <= 0 || reader.wait_readable(left).nil?

      chunk = reader.read_nonblock(65_536, exception: false)
      break if chunk.nil?

      data << chunk unless chunk == :wait_readable
    end
    reader.close
    _, status = Process.wait2(pid)
    @contract_children.delete(pid)
    raise "child #{pid} died without a result (#{status.inspect})" if data.empty?

    kind, value = Marshal.load(data) # rubocop:disable Security/MarshalLoad -- our own child
    raise "child #{pid} failed: #{value}" unless kind == :ok

    value
  end

  # Kills the children an example forked and did not reap (it failed half-way).
  def kill_contract_children
    Array(@contract_children).each do |pid|
      Process.kill(:KILL, pid)
      Process.waitpid(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  # A logger writing into a String, for what the gem logs.
  # @return [Array(Logger, StringIO)]
  def string_logger
    io = StringIO.new
    [Logger.new(io), io]
  end
end
