# frozen_string_literal: true

# The widget story from the original MegaMutex announcement, played for real.
#
# Many processes each run ensure_just_enough_things: take stock of the
# widgets and, if there are not enough, make more. Without a mutex they all
# take stock at once, all find too few and all make more: too many widgets.
# Inside with_distributed_mutex they take turns: exactly enough.
#
# Run it with bin/demo (which sets everything up first); --help for options.

require "optparse"
require "tmpdir"
require "mega_mutex"
require_relative "../spec/support/servers"

module WidgetsDemo
  MUTEX_ID = "WidgetMaker Mutex ID"
  STOCK_TAKE_TIME = 0.005 # counting the widgets takes a moment...
  WIDGET_TIME = 0.02      # ...and making one takes longer
  ROUND_GAP = 0.01        # at most this long between two rounds of a worker

  def self.clock
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # The stock all workers share: a file with one line per widget. Adding a
  # widget is a single O_APPEND write, safe on its own; counting and then
  # adding is not - which is the whole point.
  class Warehouse
    def initialize(path)
      @path = path
      File.write(path, "")
    end

    def count
      File.foreach(@path).count
    end

    def add(widget)
      File.write(@path, "#{widget}\n", mode: "a")
    end
  end

  # One round of a worker: how long it waited for the mutex (nil without
  # one) and how many widgets it made.
  Round = Struct.new(:waited, :made)

  # The class from the announcement.
  class WidgetMaker
    include MegaMutex

    def initialize(warehouse, target, name:, use_mutex:)
      @warehouse = warehouse
      @target = target
      @name = name
      @use_mutex = use_mutex
    end

    # @return [Round]
    def ensure_just_enough_things
      return Round.new(nil, top_up) unless @use_mutex

      asked = WidgetsDemo.clock
      with_distributed_mutex(MUTEX_ID) { Round.new(WidgetsDemo.clock - asked, top_up) }
    end

    private

    # make_more_widgets unless enough_widgets?, counting what is made.
    def top_up
      enough_widgets? ? 0 : make_more_widgets
    end

    def enough_widgets?
      @in_stock = @warehouse.count
      sleep STOCK_TAKE_TIME
      @in_stock >= @target
    end

    def make_more_widgets
      missing = @target - @in_stock
      missing.times do
        sleep WIDGET_TIME
        @warehouse.add("a widget made by #{@name}")
      end
      missing
    end
  end

  # What one phase measured.
  Result = Struct.new(:label, :target, :widgets, :rounds, :errors, keyword_init: true) do
    def acquisitions
      waits.size
    end

    # @return [Array<Float>] seconds each acquisition of the mutex waited
    def waits
      rounds.filter_map(&:waited)
    end

    def exactly_enough?
      widgets == target && errors.empty?
    end

    def verdict
      if errors.any? then "workers failed!"
      elsif widgets > target then "too many!"
      elsif widgets < target then "too few!"
      else "exactly enough"
      end
    end
  end

  # Shows how many rounds are done: one line rewritten in place on a
  # terminal, a plain line at each quarter otherwise.
  class Progress
    def initialize(label, total, io: $stdout)
      @label = label
      @total = total
      @io = io
      @done = 0
      @milestones = [1, 2, 3, 4].map { |q| (total * q / 4.0).ceil }.uniq
      @io.print "\r#{line}" if @io.tty?
    end

    def tick
      @done += 1
      if @io.tty?
        @io.print "\r#{line}"
      elsif @milestones.include?(@done) && @done < @total
        @io.puts line
      end
      @io.flush
    end

    def finish(seconds)
      @io.print "\r" if @io.tty?
      @io.puts format("%s in %.1f s", line, seconds)
    end

    private

    def line
      "#{"#{@label}:".ljust(19)}#{@done}/#{@total} rounds done"
    end
  end

  # Forks the workers, lets them all go at once, and gathers their rounds
  # from a pipe (one short line per round: atomic, so lines never mix).
  class Phase
    def initialize(label, use_mutex:, workers:, rounds:, target:, dir:)
      @label = label
      @use_mutex = use_mutex
      @workers = workers
      @rounds = rounds
      @target = target
      @warehouse_path = File.join(dir, "#{label.tr(' ', '-')}.widgets")
    end

    # @return [Result]
    def run
      warehouse = Warehouse.new(@warehouse_path)
      progress = Progress.new(@label, @workers * @rounds)
      rounds = []
      errors = []
      started = WidgetsDemo.clock
      results, results_in = IO.pipe
      gate, gate_opener = IO.pipe
      $stdout.flush
      @pids = Array.new(@workers) { |n| fork_worker(n, warehouse, gate, gate_opener, results, results_in) }
      [results_in, gate].each(&:close)
      gate_opener.close # every worker sees EOF now: they start together

      results.each_line do |line|
        kind, *fields = line.split(" ", 3)
        if kind == "error"
          errors << fields.join(" ").chomp
        else
          rounds << Round.new(fields[0] == "-" ? nil : Float(fields[0]), Integer(fields[1]))
          progress.tick
        end
      end
      errors.concat(reap)
      progress.finish(WidgetsDemo.clock - started)
      Result.new(label: @label, target: @target, widgets: warehouse.count, rounds: rounds, errors: errors)
    ensure
      results&.close
      stop_workers
    end

    private

    # A worker leaves with exit!, never through at_exit: the parent's hooks
    # (which stop memcached) must not run in it.
    def fork_worker(number, warehouse, gate, gate_opener, results, results_in)
      fork do
        status = 0
        begin
          [results, gate_opener].each(&:close)
          results_in.sync = true
          gate.read
          maker = WidgetMaker.new(warehouse, @target, name: "worker #{number}", use_mutex: @use_mutex)
          @rounds.times do
            round = maker.ensure_just_enough_things
            results_in.write("round #{round.waited || '-'} #{round.made}\n")
            sleep(rand * ROUND_GAP)
          end
        rescue SignalException # Ctrl-C, or stopped by the parent
          status = 130
        rescue Exception => e # anything at all: report it, then exit!
          results_in.write("error worker #{number}: #{e.class}: #{e.message}"[0, 500].tr("\n", " ") + "\n") rescue nil
          status = 1
        ensure
          Process.exit!(status)
        end
      end
    end

    # @return [Array<String>] a line for each worker that failed
    def reap
      @pids.dup.filter_map do |pid|
        _, status = Process.wait2(pid)
        @pids.delete(pid)
        "worker #{pid} exited with #{status.exitstatus || status}" unless status.success?
      end
    end

    def stop_workers
      (@pids || []).each do |pid|
        Process.kill(:TERM, pid) rescue nil
        Process.wait(pid) rescue nil
      end
      @pids = []
    end
  end

  # Reads the options, provides a memcached, runs both phases, reports.
  class CLI
    def initialize(argv)
      @options = { workers: 8, rounds: 5, target: 10, servers: nil }
      parser.parse!(argv.dup)
    rescue OptionParser::ParseError => e
      warn "demo: #{e.message} (see --help)"
      exit 2
    end

    # @return [Integer] exit status
    def run
      servers = @options[:servers] || ENV["MEMCACHE_SERVERS"].to_s.strip
      if servers.empty?
        private_server = Servers::Memcached.new.start
        servers = private_server.address
      end
      configure(servers)
      MegaMutex.get_current_lock(MUTEX_ID) # fails now if memcached cannot be reached

      puts intro(servers, private_server)
      results = Dir.mktmpdir("mega_mutex-widgets") do |dir|
        [["without the mutex", false], ["with MegaMutex", true]].map do |label, use_mutex|
          Phase.new(label, use_mutex: use_mutex, dir: dir, **@options.slice(:workers, :rounds, :target)).run
        end
      end
      puts
      puts table(results)
      report_errors(results)
      results.last.exactly_enough? ? 0 : 1
    rescue Errno::ENOENT => e
      raise unless e.message.include?("memcached")

      warn "demo: memcached is not installed: run bin/setup, or point --servers at a running memcached"
      1
    rescue MegaMutex::ConnectionError => e
      warn "demo: cannot use memcached at #{servers}: #{e.message}"
      1
    ensure
      private_server&.stop
    end

    private

    def configure(servers)
      MegaMutex.configure do |config|
        config.memcache_servers = servers
        config.namespace = "widgets-demo-#{Process.pid}-#{rand(1 << 32).to_s(16)}"
      end
    rescue ArgumentError => e
      warn "demo: #{e.message}"
      exit 2
    end

    def parser
      @parser ||= OptionParser.new do |o|
        o.banner = "Usage: bin/demo [options]   (or: ruby -Ilib demo/widgets.rb [options])"
        o.separator ""
        o.separator "Worker processes each run ensure_just_enough_things, first without a mutex,"
        o.separator "then inside MegaMutex's with_distributed_mutex, and the widgets are counted."
        o.separator "Exit status: 0 when MegaMutex made exactly enough widgets (and no worker"
        o.separator "failed), 1 otherwise, 2 for bad options."
        o.separator ""
        positive = lambda do |name|
          lambda do |value|
            raise OptionParser::InvalidArgument, "#{value} (must be at least 1)" if value < 1

            @options[name] = value
          end
        end
        o.on("-w", "--workers N", Integer, "worker processes (default #{@options[:workers]})", &positive.call(:workers))
        o.on("-r", "--rounds R", Integer, "rounds per worker (default #{@options[:rounds]})", &positive.call(:rounds))
        o.on("-t", "--target T", Integer, "widgets wanted (default #{@options[:target]})", &positive.call(:target))
        o.on("-s", "--servers LIST", "memcached host:port[,host:port...] (default:",
             "$MEMCACHE_SERVERS, else a private memcached)") do |list|
          @options[:servers] = list
        end
        o.on("-h", "--help", "show this help") do
          puts o
          exit
        end
      end
    end

    def intro(servers, private_server)
      where = private_server ? "a private memcached on #{servers}" : "memcached at #{servers}"
      "#{count(@options[:workers], 'worker')}, #{count(@options[:rounds], 'round')} each, " \
        "want #{count(@options[:target], 'widget')}; the mutex lives in #{where}.\n\n"
    end

    # "1 round", "5 rounds".
    def count(number, noun)
      "#{number} #{noun}#{number == 1 ? '' : 's'}"
    end

    def table(results)
      rows = [["", "widgets", "target", "", "acquisitions", "wait p50", "wait p99"]]
      results.each do |r|
        p50, p99 = [50, 99].map { |pct| milliseconds(percentile(r.waits, pct)) }
        # No mutex, no acquisitions: "-", as for the waits.
        acquisitions = r.rounds.any? && r.waits.empty? ? "-" : r.acquisitions
        rows << [r.label, r.widgets, r.target, r.verdict, acquisitions, p50, p99]
      end
      widths = rows.transpose.map { |column| column.map { |cell| cell.to_s.size }.max }
      rows.map do |row|
        row.each_with_index.map do |cell, i|
          [0, 3].include?(i) ? cell.to_s.ljust(widths[i]) : cell.to_s.rjust(widths[i])
        end.join("  ").rstrip
      end.join("\n")
    end

    def report_errors(results)
      results.each do |r|
        r.errors.each { |e| warn "#{r.label}: #{e}" }
      end
    end

    # Nearest-rank percentile; nil for no values.
    def percentile(values, pct)
      return nil if values.empty?

      sorted = values.sort
      sorted[(pct / 100.0 * sorted.size).ceil - 1]
    end

    def milliseconds(seconds)
      seconds ? format("%.1f ms", seconds * 1000) : "-"
    end
  end
end

begin
  exit WidgetsDemo::CLI.new(ARGV).run
rescue Interrupt
  warn "\ninterrupted"
  exit 130
end
