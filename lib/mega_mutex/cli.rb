# frozen_string_literal: true

require "optparse"
require "socket"
require "mega_mutex"

module MegaMutex
  # The `mega_mutex` command: flock(1) across machines. Loaded only by the
  # executable (exe/mega_mutex), never by `require "mega_mutex"`.
  #
  #   mega_mutex exec NAME [--timeout S | --wait] [--ttl S] -- COMMAND [ARGS...]
  #   mega_mutex status NAME
  #   mega_mutex release NAME --force
  #
  # Every subcommand takes --servers H:P,... and --namespace NS (before or
  # after the subcommand), --help; `mega_mutex --version` prints the version.
  #
  # Exit statuses follow sysexits(3) where one fits; see {#run}.
  #
  # @example From Ruby (what the executable does)
  #   exit MegaMutex::CLI.new.run(ARGV)
  class CLI
    # Success; for `status`: the lock is free.
    EX_OK = 0
    # `status`: the lock is held.
    EX_HELD = 1
    # Bad usage: unknown option, missing NAME or COMMAND, bad number.
    EX_USAGE = 64
    # memcached cannot be reached or refused the request.
    EX_UNAVAILABLE = 69
    # COMMAND succeeded but the lease was lost while it ran; or an internal error.
    EX_SOFTWARE = 70
    # The lock was not obtained in time (it is held by someone else).
    EX_TEMPFAIL = 75
    # COMMAND was found but could not be executed.
    EX_NOEXEC = 126
    # COMMAND was not found.
    EX_NOTFOUND = 127

    # Signals forwarded to COMMAND while it runs.
    FORWARDED_SIGNALS = %w[TERM INT HUP].freeze
    # Seconds before the waiting line first appears, and between redraws.
    LIVE_LINE_DELAY = 0.2
    # Seconds between reads of the holder for the waiting line.
    LIVE_LINE_HOLDER_EVERY = 1.0

    # The program's name in messages and help.
    PROGRAM = "mega_mutex"

    # A command line that cannot be run as given: exit status 64.
    # @api private
    class UsageError < StandardError
      # @return [String, nil] the subcommand whose --help to point at
      attr_reader :subcommand

      def initialize(message, subcommand = nil)
        super(message)
        @subcommand = subcommand
      end
    end

    # Ends a run early with an exit status (--help, --version).
    # @api private
    class Done < StandardError
      # @return [Integer] the exit status to return
      attr_reader :status

      def initialize(status)
        super("done")
        @status = status
      end
    end

    # @param out [IO] where results and help go
    # @param err [IO] where messages, warnings and the waiting line go
    def initialize(out: $stdout, err: $stderr)
      @out = out
      @err = err
    end

    # Runs one command line and returns its exit status. Never calls exit,
    # never raises for a bad command line or an unreachable memcached.
    #
    # Exit statuses:
    # - exec: COMMAND's own status; 128+N if it died of signal N
    # - 0: status: free; release --force: done; --help, --version
    # - 1: status: held
    # - 64 (EX_USAGE): usage error
    # - 69 (EX_UNAVAILABLE): memcached unreachable or refusing
    # - 70 (EX_SOFTWARE): exec: COMMAND exited 0 but the lease was lost while it ran
    # - 75 (EX_TEMPFAIL): exec: the lock was not obtained in time
    # - 126, 127: exec: COMMAND not executable / not found
    # - 128+N: exec: signal N arrived before COMMAND started
    #
    # @param argv [Array<String>] the arguments, without the program name
    # @return [Integer] the exit status
    def run(argv)
      @settings = {}
      @subcommand_hint = nil
      args = argv.dup
      global_parser.order!(args)
      subcommand = args.shift
      @subcommand_hint = subcommand if %w[exec status release].include?(subcommand)
      case subcommand
      when "exec" then run_exec(args)
      when "status" then run_status(args)
      when "release" then run_release(args)
      when "help" then run_help(args)
      when nil then raise UsageError, "missing command (exec, status or release)"
      else raise UsageError, "unknown command #{subcommand.inspect} (exec, status or release)"
      end
    rescue Done => e
      e.status
    rescue UsageError, OptionParser::ParseError => e
      usage_failure(e)
    rescue ConnectionError, ServerError => e
      error("cannot use memcached: #{e.message}")
      EX_UNAVAILABLE
    end

    # `mega_mutex exec NAME [options] -- COMMAND [ARGS...]`: runs COMMAND
    # while holding NAME, forwarding TERM, INT and HUP to it, and returns its
    # exit status.
    # @param args [Array<String>] the arguments after "exec"
    # @return [Integer] the exit status
    # @raise [UsageError] for a bad command line
    def run_exec(args)
      opts = { timeout: 0, ttl: nil }
      parser = exec_parser(opts)
      name, command = split_exec_args(parser, args)
      raise UsageError.new("--timeout and --wait cannot be used together", "exec") if opts[:timeout_given] && opts[:wait]

      configure!
      timeout = opts[:wait] ? nil : opts[:timeout]
      lock = build_lock(name, "exec", timeout: timeout, ttl: opts[:ttl])
      hold_and_run(lock, name, command, timeout)
    end

    # `mega_mutex status NAME`: prints whether NAME is held, by whom and the
    # lease left on the server.
    # @param args [Array<String>] the arguments after "status"
    # @return [Integer] 0 when free, 1 when held
    # @raise [UsageError] for a bad command line
    # @raise [ConnectionError] when memcached cannot be reached
    def run_status(args)
      name = single_name(status_parser, args, "status")
      configure!
      key = build_lock(name, "status").key
      holder, server = MegaMutex.pool.with { |client| [client._read(key), client._server_for(key)] }
      where = "key #{key} on #{format_server(server)}"
      if holder
        lease = lease_left(server, key)
        unless lease == :gone
          @out.puts "#{name}: held by #{holder}, #{describe_lease(lease)} (#{where})"
          return EX_HELD
        end
      end
      @out.puts "#{name}: free (#{where})"
      EX_OK
    end

    # `mega_mutex release NAME --force`: removes the lock whoever holds it.
    # @param args [Array<String>] the arguments after "release"
    # @return [Integer] 0 (also when there was nothing to release)
    # @raise [UsageError] without --force, or for a bad command line
    # @raise [ConnectionError] when memcached cannot be reached
    def run_release(args)
      opts = {}
      name = single_name(release_parser(opts), args, "release")
      unless opts[:force]
        raise UsageError.new("release removes the lock whoever holds it, so the holder may still be running " \
                             "while another process takes it; pass --force if that is what you want", "release")
      end

      configure!
      key = build_lock(name, "release").key
      holder, removed = MegaMutex.pool.with { |client| [client._read(key), client._force_release(key)] }
      if removed
        @out.puts "#{name}: released#{holder ? " (was held by #{holder})" : ''}"
      else
        @out.puts "#{name}: was not held, nothing to release"
      end
      EX_OK
    end

    # `mega_mutex help [COMMAND]`: prints the help of the program or of one
    # subcommand.
    # @param args [Array<String>] the arguments after "help"
    # @return [Integer] 0
    # @raise [UsageError] for an unknown subcommand
    def run_help(args)
      parser = case args.first
               when nil then global_parser
               when "exec" then exec_parser({})
               when "status" then status_parser
               when "release" then release_parser({})
               else raise UsageError, "no help for #{args.first.inspect} (exec, status or release)"
               end
      @out.puts parser.help
      EX_OK
    end

    private

    # --- exec ------------------------------------------------------------

    # NAME and COMMAND: everything after the first "--" is COMMAND; without
    # "--", the first argument after NAME that is not an option starts it.
    def split_exec_args(parser, args)
      if (split = args.index("--"))
        rest = parser.parse(args[0...split])
        command = args[(split + 1)..]
      else
        rest = parser.order(args)
        name = rest.shift
        command = parser.order(rest)
        rest = name.nil? ? [] : [name]
      end
      raise UsageError.new("missing NAME", "exec") if rest.empty?
      raise UsageError.new("unexpected argument #{rest[1].inspect} before --", "exec") if rest.size > 1
      raise UsageError.new("missing COMMAND (after --)", "exec") if command.empty?

      [rest.first, command]
    end

    def hold_and_run(lock, name, command, timeout)
      @state = :waiting
      @child = nil
      @pending = []
      status = nil
      previous = install_traps
      live = start_live_line(name, timeout)
      begin
        lock.synchronize do
          @state = :holding
          live&.stop
          status = run_child(command)
        end
        status
      rescue TimeoutError => e
        live&.stop
        holder = e.holder || current_holder(name)
        error("#{name} is held by #{holder || 'another process'}; " \
              "#{timeout.to_f.zero? ? 'not waiting (use --timeout S or --wait)' : "gave up after #{timeout} s"}")
        EX_TEMPFAIL
      rescue LockLostError => e
        error("warning: #{e.message}; another process may have run while COMMAND did")
        status.nil? || status.zero? ? EX_SOFTWARE : status
      rescue ConnectionError, ServerError => e
        raise if status.nil?

        error("warning: could not release #{name} (#{e.message}); it frees itself when its lease runs out")
        status
      rescue SignalException => e
        live&.stop
        128 + e.signo
      ensure
        live&.stop
        @state = :done
        restore_traps(previous)
      end
    end

    def current_holder(name)
      MegaMutex.get_current_lock(name)
    rescue Error
      nil
    end

    # Traps TERM, INT and HUP: while waiting they end the wait (exit 128+N);
    # while COMMAND runs they are forwarded to it. A signal ignored when
    # mega_mutex started (nohup, a background job) stays ignored, for
    # mega_mutex and for COMMAND alike.
    def install_traps
      FORWARDED_SIGNALS.to_h do |sig|
        previous = trap(sig) { |signo| on_signal(signo) }
        trap(sig, "IGNORE") if previous == "IGNORE"
        [sig, previous]
      end
    end

    def restore_traps(previous)
      previous.each { |sig, handler| trap(sig, handler.nil? ? "DEFAULT" : handler) }
    end

    def on_signal(signo)
      case @state
      # Thread#raise, unlike raise, waits while the lock's bookkeeping runs
      # with interrupts deferred; it still ends the wait itself at once.
      when :waiting then Thread.main.raise(SignalException.new(signo))
      when :holding
        if @child
          begin
            Process.kill(signo, @child)
          rescue SystemCallError
            nil
          end
        else
          @pending << signo
        end
      end
      # :done: COMMAND has finished; mega_mutex only releases the lock and exits.
    end

    def run_child(command)
      return 128 + @pending.first unless @pending.empty?

      begin
        pid = Process.spawn([command.first, command.first], *command.drop(1))
      rescue Errno::ENOENT
        error("#{command.first}: command not found")
        return EX_NOTFOUND
      rescue SystemCallError => e
        error("#{command.first}: cannot execute: #{e.message.sub(/ - .*\z/m, '')}")
        return EX_NOEXEC
      end
      @child = pid
      @pending.each { |signo| Process.kill(signo, pid) }
      @pending.clear
      _, status = Process.wait2(pid)
      @child = nil # before any other signal could be sent to a reused pid
      @state = :done
      status.exited? ? status.exitstatus : 128 + status.termsig
    end

    # The waiting line, on a terminal only: how long mega_mutex has waited and
    # who holds the lock, redrawn in place and cleared once the wait ends.
    class LiveLine
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
    private_constant :LiveLine

    def start_live_line(name, timeout)
      return nil if timeout&.zero?
      return nil unless @err.respond_to?(:tty?) && @err.tty?

      LiveLine.new(@err, name, timeout)
    end

    # --- status ----------------------------------------------------------

    # Asks the server that keeps `key` for its remaining expiry with the meta
    # protocol: "mg <key> v t" -> "VA <len> t<secs>" + data, or "EN".
    # @return [Integer, Symbol] seconds left; -1 never expires; :gone; :unknown
    def lease_left(server, key)
      config = MegaMutex.configuration
      host, port = server
      sock = open_socket(host, port, config.connect_timeout)
      begin
        sock.write("mg #{key} v t\r\n")
        line = read_line(sock, config.io_timeout)
        case line
        when /\AEN\z/ then :gone
        when /\A(?:VA \d+|HD)((?: \S+)*)\z/
          flag = Regexp.last_match(1).split.find { |f| f.start_with?("t") }
          flag ? Integer(flag[1..]) : :unknown
        else :unknown # an older memcached without meta commands
        end
      ensure
        sock.close
      end
    rescue SystemCallError, IOError, SocketError => e
      raise ConnectionError, "memcached #{format_server(server)}: #{e.message}"
    end

    def open_socket(host, port, connect_timeout)
      return UNIXSocket.new(host) if port.zero?

      Socket.tcp(host, port, connect_timeout: connect_timeout)
    end

    def read_line(sock, io_timeout)
      line = +""
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + io_timeout
      until line.include?("\r\n")
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        raise IOError, "no answer within #{io_timeout} s" if left <= 0 || !sock.wait_readable(left)

        line << sock.readpartial(4096)
      end
      line[/\A[^\r]*/]
    end

    def describe_lease(lease)
      case lease
      when :unknown then "lease unknown"
      when -1 then "no expiry"
      else "lease #{lease} s left"
      end
    end

    def format_server(server)
      host, port = server
      return host if port.zero?

      host.include?(":") ? "[#{host}]:#{port}" : "#{host}:#{port}"
    end

    # --- options ---------------------------------------------------------

    def single_name(parser, args, subcommand)
      rest = parser.parse(args)
      raise UsageError.new("missing NAME", subcommand) if rest.empty?
      raise UsageError.new("unexpected argument #{rest[1].inspect}", subcommand) if rest.size > 1

      rest.first
    end

    def build_lock(name, subcommand, **options)
      Lock.new(name, **options)
    rescue ArgumentError => e
      raise UsageError.new(e.message.sub("mutex id", "NAME"), subcommand)
    end

    # Applies --servers and --namespace over the defaults
    # (ENV["MEMCACHE_SERVERS"], else localhost:11211; namespace "mega_mutex").
    def configure!
      servers = @settings[:servers]
      saved = ENV.fetch("MEMCACHE_SERVERS", nil)
      # The defaults read MEMCACHE_SERVERS; --servers replaces it, even a bad one.
      ENV["MEMCACHE_SERVERS"] = servers if servers
      begin
        MegaMutex.reset_configuration!
        MegaMutex.configure do |c|
          c.namespace = @settings[:namespace] if @settings[:namespace]
          c.on_lock_lost = :raise
        end
      ensure
        ENV["MEMCACHE_SERVERS"] = saved if servers
      end
    rescue ArgumentError => e
      message = e.message
      message = message.sub("memcache_servers", servers ? "--servers" : "MEMCACHE_SERVERS")
      raise UsageError, message.sub(/\Anamespace/, "--namespace")
    end

    def common_options(parser)
      parser.separator ""
      parser.separator "Options for every command:"
      parser.on("--servers H:P,...", "memcached servers, comma-separated: host, host:port, [v6]:port or /socket",
                "(default: $MEMCACHE_SERVERS, else localhost:11211)") { |v| @settings[:servers] = v }
      parser.on("--namespace NS", "key prefix (default: mega_mutex)") { |v| @settings[:namespace] = v }
      parser.on("-h", "--help", "show this help") do
        @out.puts parser.help
        raise Done, EX_OK
      end
      parser.on("--version", "show the version") do
        @out.puts "#{PROGRAM} #{MegaMutex::VERSION}"
        raise Done, EX_OK
      end
    end

    def global_parser
      OptionParser.new do |p|
        p.program_name = PROGRAM
        p.banner = <<~TEXT.chomp
          Usage: #{PROGRAM} COMMAND NAME [options]

          flock(1) across machines: run a command while holding a lock kept in memcached.

          Commands:
              exec NAME [options] -- COMMAND [ARGS...]   run COMMAND holding the lock NAME
              status NAME                                 is NAME held, by whom, lease left
              release NAME --force                        remove a stuck lock, whoever holds it
              help [COMMAND]                              help on one command
        TEXT
        common_options(p)
        p.separator ""
        p.separator exit_statuses
      end
    end

    def exec_parser(opts)
      OptionParser.new do |p|
        p.program_name = PROGRAM
        p.banner = <<~TEXT.chomp
          Usage: #{PROGRAM} exec NAME [--timeout S | --wait] [--ttl S] [options] -- COMMAND [ARGS...]

          Runs COMMAND (no shell: use sh -c '...' for one) while holding the lock NAME, renewing
          its lease while COMMAND runs, and exits with COMMAND's status (128+N if it died of
          signal N). TERM, INT and HUP are forwarded to COMMAND. The lock is released when
          COMMAND exits. The -- may be left out when COMMAND does not start with "-".
        TEXT
        p.separator ""
        p.separator "Options:"
        p.on("--timeout S", "wait up to S seconds for the lock (default 0: one try, no wait)") do |v|
          opts[:timeout] = seconds(v, "--timeout")
          opts[:timeout_given] = true
        end
        p.on("--wait", "wait as long as it takes") { opts[:wait] = true }
        p.on("--ttl S", "lease in seconds, renewed every S/3 while COMMAND runs (default 30);",
             "a crashed holder's lock frees itself after S+2 s") do |v|
          opts[:ttl] = ttl(v)
        end
        common_options(p)
        p.separator ""
        p.separator exit_statuses
      end
    end

    def status_parser
      OptionParser.new do |p|
        p.program_name = PROGRAM
        p.banner = <<~TEXT.chomp
          Usage: #{PROGRAM} status NAME [options]

          Prints whether NAME is held, by which token (host:pid:random) and the lease left in
          seconds, as the server counts it (the lease on the wire is --ttl + 2 s).
          Exit status: 0 free, 1 held, 69 memcached unreachable, 64 usage error.
        TEXT
        common_options(p)
      end
    end

    def release_parser(opts)
      OptionParser.new do |p|
        p.program_name = PROGRAM
        p.banner = <<~TEXT.chomp
          Usage: #{PROGRAM} release NAME --force [options]

          Removes the lock NAME whoever holds it, and names the former holder. The holder is not
          stopped: it finds its lease lost (mega_mutex exec warns and exits 70).
          Exit status: 0 released or not held, 69 memcached unreachable, 64 usage error.
        TEXT
        p.separator ""
        p.separator "Options:"
        p.on("--force", "required: yes, remove it even though someone may hold it") { opts[:force] = true }
        common_options(p)
      end
    end

    def exit_statuses
      <<~TEXT.chomp
        Exit statuses:
            COMMAND's   exec: COMMAND's own status (128+N if it died of signal N)
            0           status: free; release: done
            1           status: held
            64          usage error
            69          memcached cannot be reached (or refused)
            70          exec: COMMAND exited 0 but the lock's lease was lost while it ran
            75          exec: the lock is held by someone else (not obtained in time)
            126, 127    exec: COMMAND cannot be executed / was not found
            128+N       exec: signal N arrived while waiting for the lock
      TEXT
    end

    def seconds(value, flag)
      number = Float(value)
      raise ArgumentError unless number.finite? && number >= 0

      number == number.floor && number < 1e15 ? number.to_i : number
    rescue ArgumentError, TypeError
      raise UsageError, "#{flag} needs a number of seconds, 0 or more (got #{value.inspect})"
    end

    def ttl(value)
      number = Float(value)
      Configuration.ttl_value(number, :ttl)
    rescue ArgumentError, TypeError
      raise UsageError, "--ttl needs a number of seconds between 1 and #{Configuration::MAX_TTL} (got #{value.inspect})"
    end

    def usage_failure(exception)
      message, suggestions = exception.message.split(/\n\s*Did you mean\?\s*/, 2)
      if suggestions
        names = suggestions.split.map { |s| s.start_with?("-") ? s : "--#{s}" }
        message = "#{message} (did you mean #{names.join(' or ')}?)"
      end
      subcommand = (exception.subcommand if exception.respond_to?(:subcommand)) || @subcommand_hint
      error(message)
      @err.puts(subcommand ? "Try '#{PROGRAM} #{subcommand} --help'." : "Try '#{PROGRAM} --help'.")
      EX_USAGE
    end

    def error(message)
      @err.puts "#{PROGRAM}: #{message}"
    rescue IOError, SystemCallError
      nil
    end
  end
end
