# frozen_string_literal: true

require "tmpdir"
require "fileutils"

# Worker processes that start together, for the benchmarks (bench/run.rb,
# bench/mysql.rb): each builds its lock, warms up on a key of its own, says
# it is ready, waits at a start barrier (a pipe the parent closes), then runs
# the block and hands back what it returned.
module BenchWorkers
  # @param name [String] the contender, for error messages
  # @param count [Integer] how many processes
  # @param build [#call] makes a worker's lock (called in the worker)
  # @param children [Array<Integer>] the caller's list of live children
  #   (pids are added while they run, so the caller can kill them on Ctrl-C)
  # @param measure [#call] read just before the start and after the last
  #   worker ended (the server's request counters, say)
  # @yieldparam lock the worker's lock
  # @yieldparam i [Integer] the worker's number
  # @return [Array(Array, Object, Object)] each worker's result, and
  #   `measure` before and after
  def self.run(name, count, build:, children:, measure: -> {})
    dir = Dir.mktmpdir("bench-workers")
    ready_r, ready_w = IO.pipe
    go_r, go_w = IO.pipe
    pids = Array.new(count) do |i|
      pid = fork do
        ready_r.close
        go_w.close
        status = 0
        begin
          lock = build.call
          lock.synchronize("warm-#{Process.pid}") {}
          GC.start
          ready_w.write("r")
          ready_w.close
          go_r.read # EOF when the parent closes its end: everybody starts together
          File.binwrite(File.join(dir, "#{i}.bin"), Marshal.dump(yield(lock, i)))
        rescue Exception => e # rubocop:disable Lint/RescueException -- reported by the parent
          File.write(File.join(dir, "#{i}.err"), "#{e.class}: #{e.message}\n#{e.backtrace&.first(5)&.join("\n")}")
          status = 1
        end
        exit!(status)
      end
      children << pid
      pid
    end
    ready_w.close
    go_r.close
    got = 0
    deadline = now + 30 + count # a loaded machine: workers may take seconds to get ready
    while got < count && now < deadline
      next unless ready_r.wait_readable(1)

      chunk = ready_r.read_nonblock(64, exception: false)
      break if chunk.nil?

      got += chunk.size unless chunk == :wait_readable
    end
    raise "#{name}: only #{got}/#{count} workers got ready#{errors(dir)}" if got < count

    before = measure.call
    go_w.close
    statuses = pids.map { |pid| Process.wait2(pid)[1] }
    children.replace(children - pids)
    after = measure.call
    raise "#{name}: #{statuses.count { |s| !s.success? }} worker(s) failed#{errors(dir)}" unless statuses.all?(&:success?)

    results = Array.new(count) { |i| Marshal.load(File.binread(File.join(dir, "#{i}.bin"))) } # rubocop:disable Security/MarshalLoad -- our own children
    [results, before, after]
  ensure
    [ready_r, ready_w, go_r, go_w].each { |io| io&.close unless io&.closed? }
    FileUtils.rm_rf(dir) if dir
  end

  def self.now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def self.errors(dir)
    errs = Dir[File.join(dir, "*.err")].map { |f| File.read(f) }
    errs.empty? ? "" : ":\n#{errs.first(3).join("\n")}"
  end
  private_class_method :now, :errors
end
