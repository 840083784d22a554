# frozen_string_literal: true

require "mega_mutex"
require "mega_mutex/cli/options"
require "mega_mutex/cli/status"
require "mega_mutex/cli/exec"
require "mega_mutex/cli/live_line"

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
  # NAME and COMMAND's arguments may be any bytes.
  #
  # This file dispatches; the parts are in cli/: options.rb (the command
  # line), exec.rb (running COMMAND under the lock, its guard and the
  # terminal), status.rb (the lease left) and live_line.rb (the waiting line).
  #
  # Exit statuses follow sysexits(3) where one fits; see {#run}.
  #
  # @example From Ruby (what the executable does)
  #   exit MegaMutex::CLI.new.run(ARGV)
  class CLI
    include Options
    include Status
    include Exec

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
    # - 70 (EX_SOFTWARE): exec: COMMAND exited 0 but the lease was lost while
    #   it ran; any command: an internal error (never 1, which means "held")
    # - 75 (EX_TEMPFAIL): exec: the lock was not obtained in time
    # - 126, 127: exec: COMMAND not executable / not found
    # - 128+N: exec: signal N arrived before COMMAND started
    #
    # @param argv [Array<String>] the arguments, without the program name;
    #   any bytes, in any encoding
    # @return [Integer] the exit status
    def run(argv)
      @settings = {}
      @subcommand_hint = nil
      args = bytes_safe(argv)
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
    rescue StandardError => e
      error("internal error: #{e.class}: #{e.message} (at #{e.backtrace&.first})")
      EX_SOFTWARE
    end

    # `mega_mutex exec NAME [options] -- COMMAND [ARGS...]`: runs COMMAND
    # while holding NAME, forwarding TERM, INT and HUP to it, and returns its
    # exit status. COMMAND runs in its own process group, killed if mega_mutex
    # dies first.
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
      # The store describes the key: holder, lease left, where it lives.
      holder, lease, server = MegaMutex.pool.with { |client| client._describe(key) }
      where = "key #{key} on #{server}"
      if holder
        @out.puts "#{name}: held by #{holder}, #{describe_lease(lease)} (#{where})"
        return EX_HELD
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

    def error(message)
      @err.puts "#{PROGRAM}: #{message}"
    rescue IOError, SystemCallError
      nil
    end
  end
end
