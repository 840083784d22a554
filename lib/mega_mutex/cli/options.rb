# frozen_string_literal: true

require "optparse"

module MegaMutex
  class CLI
    # The command line: parsers and help texts, NAME and COMMAND, numbers, and
    # --servers/--namespace applied over the defaults. Arguments are bytes: one
    # that is not valid in the locale's encoding (a NAME like $'a\xff' under
    # C.UTF-8) is taken as binary, never an error.
    # @api private
    module Options
      private

      # @param argv [Array<String>]
      # @return [Array<String>] copies; any argument in invalid encoding as binary
      def bytes_safe(argv)
        argv.map { |arg| arg.valid_encoding? ? arg.dup : arg.b }
      end

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

      # Applies --backend, --servers and --namespace over the defaults
      # (backend $MEGA_MUTEX_BACKEND, else memcached; servers
      # ENV["MEMCACHE_SERVERS"], else localhost:11211; namespace "mega_mutex").
      # A backend's own settings come from its environment variables (e.g.
      # MEGA_MUTEX_MYSQL_URL for :mysql).
      def configure!
        backend = @settings[:backend] || ENV.fetch("MEGA_MUTEX_BACKEND", nil)
        servers = @settings[:servers]
        saved = ENV.fetch("MEMCACHE_SERVERS", nil)
        # The defaults read MEMCACHE_SERVERS; --servers replaces it, even a bad one.
        ENV["MEMCACHE_SERVERS"] = servers if servers
        begin
          MegaMutex.reset_configuration!
          MegaMutex.configure do |c|
            configure_backend(c, backend) if backend
            c.mysql_url = @settings[:mysql_url] if @settings[:mysql_url]
            c.namespace = @settings[:namespace] if @settings[:namespace]
            c.on_lock_lost = :raise
          end
        ensure
          ENV["MEMCACHE_SERVERS"] = saved if servers
        end
      rescue ArgumentError => e
        message = e.message
        message = message.sub("memcache_servers", servers ? "--servers" : "MEMCACHE_SERVERS")
        message = message.sub("mysql_url", @settings[:mysql_url] ? "--mysql-url" : "MEGA_MUTEX_MYSQL_URL")
        raise UsageError, message.sub(/\Anamespace/, "--namespace")
      end

      # The memory backend would lock this one process only: no use to a command.
      def configure_backend(config, name)
        where = @settings[:backend] ? "--backend" : "MEGA_MUTEX_BACKEND"
        choices = (Configuration::BACKENDS - [:memory]).join(", ")
        unless (Configuration::BACKENDS - [:memory]).map(&:to_s).include?(name)
          raise UsageError, "#{where} must be one of #{choices} (got #{name.inspect})"
        end

        config.backend = name
      end

      def common_options(parser)
        parser.separator ""
        parser.separator "Options for every command:"
        parser.on("--servers H:P,...", "memcached servers, comma-separated: host, host:port, [v6]:port or /socket",
                  "(default: $MEMCACHE_SERVERS, else localhost:11211)") { |v| @settings[:servers] = v }
        parser.on("--backend NAME", "where locks live: memcached, mysql or quorum",
                  "(default: $MEGA_MUTEX_BACKEND, else memcached; mysql reads $MEGA_MUTEX_MYSQL_URL)") do |v|
          @settings[:backend] = v
        end
        parser.on("--mysql-url URL", "with --backend mysql: mysql://user:password@host:port[/db][?socket=/path]",
                  "(default: $MEGA_MUTEX_MYSQL_URL)") { |v| @settings[:mysql_url] = v }
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
            COMMAND exits. COMMAND runs in its own process group, which is killed if mega_mutex
            dies first (kill -9 included), so COMMAND never runs without the lock. The -- may be
            left out when COMMAND does not start with "-".
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
              70          exec: COMMAND exited 0 but the lock's lease was lost while it ran;
                          or an internal error
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
    end
  end
end
