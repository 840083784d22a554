# frozen_string_literal: true

require "socket"
require "timeout"
require "tmpdir"
require "fileutils"
require "open3"

# The one place that starts and stops the servers the suite, the bench, the
# chaos suite and the demo run against: real server processes on free
# loopback ports (or a unix socket), each in its own process group, stopped by
# pid (never by name, never a fixed port).
#
#   server = Servers::Memcached.new(args: %w[-M -m 64]).start
#   server.address             # => "127.0.0.1:40123"
#   server.command("stats")    # one text-protocol request
#   server.pause / resume      # SIGSTOP / SIGCONT
#   server.restart             # same port, every item lost
#   server.stop                # SIGKILL by pid, reaped
#
#   redis = Servers.start(:redis) if Servers::Redis.available?
#   redis.command("PING")      # => "+PONG\r\n"
#
# Every server started is stopped at exit by the process that started it (a
# forked child that exits normally leaves its parent's servers alone).
#
# A new kind of server (MariaDB next) is a subclass that names its program
# and implements {Server#argv} (the command line for a port or a socket) and
# {Server#ready?} (one probe, true once it answers); {Server#needs_dir?}
# gives it a private temporary directory ({Server#dir}) for its data, removed
# at stop. Register it in {KINDS} to start it with {Servers.start}.
module Servers
  @all = []
  @all_mutex = Mutex.new

  class << self
    # @return [Array<Server>] every server made in this process (started or not)
    def all
      @all_mutex.synchronize { @all.dup }
    end

    # @api private
    def register(server)
      @all_mutex.synchronize { @all << server }
    end

    # Stops every server this process started. Servers a parent started are
    # not this process's to stop: a forked child that exits normally must not
    # kill the servers the parent (the suite) is using.
    # @return [void]
    def stop_all
      all.each { |server| server.stop if server.owner == Process.pid }
    end

    # A loopback port nobody listens on right now (bound, then closed). Another
    # process may take it before the caller does: {Server#start} retries.
    # @return [Integer]
    def free_port
      server = TCPServer.new("127.0.0.1", 0)
      server.addr[1]
    ensure
      server&.close
    end

    # Starts a server of the given kind.
    # @param kind [Symbol] a key of {KINDS}
    # @return [Server] started
    def start(kind, **options)
      KINDS.fetch(kind) { raise ArgumentError, "unknown server kind #{kind.inspect} (known: #{KINDS.keys.join(', ')})" }
           .new(**options).start
    end
  end
  at_exit { Servers.stop_all }

  # A server process: spawned, probed until it answers, killed by pid.
  # Subclasses implement #argv, #ready? and #program.
  class Server
    # Seconds a server has to answer its first probe.
    START_TIMEOUT = 5
    # Attempts at starting (a port taken between free_port and the server's
    # bind is the usual reason for a retry).
    ATTEMPTS = 5

    # @return [Integer, nil] the TCP port (nil before #start, or for a unix socket)
    attr_reader :port
    # @return [Integer, nil] the server's pid while it runs
    attr_reader :pid
    # @return [Array<String>] extra command-line flags
    attr_reader :args
    # @return [String, nil] a unix socket path to listen on instead of a port
    attr_reader :socket
    # @return [Integer, nil] the process that started it (the one to stop it at exit)
    attr_reader :owner
    # @return [String, nil] the server's private directory (see #needs_dir?)
    attr_reader :dir

    class << self
      # @return [Array<Server>] the servers of this class made in this process
      def all
        Servers.all.grep(self)
      end

      # Stops the servers of this class this process started.
      def stop_all
        all.each { |server| server.stop if server.owner == Process.pid }
      end

      # @return [Integer] see {Servers.free_port}
      def free_port
        Servers.free_port
      end

      # @return [Boolean] true when the server's program is installed
      def available?
        system("command -v #{allocate.program} >/dev/null 2>&1")
      end
    end

    # @param args [Array<String>] extra flags for the server
    # @param port [Integer, nil] a fixed port (e.g. to talk to a server another
    #   process started); nil: a free one at #start
    # @param socket [String, nil] listen on this unix socket path instead of a port
    def initialize(args: [], port: nil, socket: nil)
      @args = args
      @port = port
      @socket = socket
      @pid = nil
      @owner = nil
      @dir = nil
      Servers.register(self)
    end

    # @return [String] "127.0.0.1:port", or the socket path
    def address
      socket || "127.0.0.1:#{port}"
    end

    # Starts the server and waits until it answers; on a port another process
    # took meanwhile, tries again on another free port.
    # @return [self]
    # @raise [RuntimeError] when it does not come up after {ATTEMPTS} tries
    def start
      fixed_port = !@port.nil?
      attempts = 0
      begin
        attempts += 1
        @port ||= Servers.free_port unless socket
        @dir ||= Dir.mktmpdir("#{program}-") if needs_dir?
        @owner = Process.pid
        @pid = Process.spawn(program, *argv, out: File::NULL, err: File::NULL, pgroup: true)
        wait_until_up
      rescue Errno::ECONNREFUSED, Errno::ENOENT, Timeout::Error => e
        stop
        raise "#{program} did not start on #{address} after #{attempts} attempt(s): #{e.message}" if attempts >= ATTEMPTS

        @port = nil unless fixed_port
        retry
      end
      self
    end

    # @return [Boolean] true while the process runs
    def running?
      return false unless @pid

      Process.waitpid(@pid, Process::WNOHANG).nil?
    rescue Errno::ECHILD
      false
    end

    # Kills the server (SIGKILL, by pid) and reaps it; removes its directory.
    # @return [void]
    def stop
      if @pid
        pid = @pid
        @pid = nil
        Process.kill(:CONT, pid) rescue nil # a paused server dies all the same, but reap it now
        Process.kill(:KILL, pid) rescue nil
        Process.waitpid(pid) rescue nil
      end
      FileUtils.rm_rf(@dir) if @dir && !keep_dir_on_stop?
      @dir = nil unless keep_dir_on_stop?
      FileUtils.rm_f(socket) if socket && File.socket?(socket)
    end

    # A restart on the same port (or socket): a crash and a fresh start.
    # @return [self]
    def restart
      stop
      start
    end

    # SIGSTOP, then waits until every thread of the server is stopped: kill
    # returns before a thread busy on another core has stopped, and such a
    # thread may still answer a request or two.
    # @return [void]
    def pause
      Process.kill(:STOP, @pid)
      Timeout.timeout(5) { sleep 0.001 until thread_states.all?("T") }
    end

    # SIGCONT.
    # @return [void]
    def resume
      Process.kill(:CONT, @pid)
    end

    # @return [String] the program to run
    def program
      raise NotImplementedError, "#{self.class} must name its program"
    end

    # @return [Array<String>] the command line after the program name
    def argv
      raise NotImplementedError, "#{self.class} must give its command line"
    end

    # One probe: true once the server answers requests.
    # @return [Boolean]
    def ready?
      raise NotImplementedError, "#{self.class} must say how to probe it"
    end

    # @return [Boolean] true for a server that needs a directory of its own
    def needs_dir?
      false
    end

    # @return [Boolean] true to keep #dir across #restart (a server whose data
    #   must survive a restart); false: a fresh directory each start
    def keep_dir_on_stop?
      false
    end

    # @return [String]
    def inspect
      "#<#{self.class.name} #{address} pid=#{@pid.inspect}>"
    end

    private

    # @return [Socket] a connection to the server (TCP or unix)
    def connect(&block)
      if socket
        Socket.unix(socket, &block)
      else
        Socket.tcp("127.0.0.1", port, connect_timeout: 2, &block)
      end
    end

    # Reads from sock until the reply satisfies complete (a proc on the
    # bytes so far); fails after 5 s.
    def read_reply(sock, complete)
      reply = +""
      Timeout.timeout(5) do
        reply << sock.readpartial(65_536) until complete.call(reply)
      end
      reply
    end

    # The scheduler states ("R", "S", "T", ...) of the server's threads.
    def thread_states
      Dir["/proc/#{@pid}/task/*/stat"].filter_map do |path|
        File.read(path)[/\) (\S)/, 1]
      rescue Errno::ENOENT, Errno::ESRCH
        nil
      end
    end

    def wait_until_up
      Timeout.timeout(self.class::START_TIMEOUT) do
        loop do
          raise Errno::ECONNREFUSED, "#{program} exited" unless running?

          begin
            return if ready?
          rescue Errno::ECONNREFUSED, Errno::ECONNRESET, Errno::ENOENT, EOFError, IOError
            nil
          end
          sleep 0.01
        end
      end
    end
  end

  # memcached, text protocol, UDP off, two worker threads.
  class Memcached < Server
    # A reply's last line, for the commands the specs send.
    TERMINATOR = /(END|OK|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|ERROR[^\r]*|VERSION [^\r]*|HD[^\r]*|EN)\r\n\z/.freeze

    def program
      "memcached"
    end

    def argv
      user = Process.uid.zero? ? ["-u", "root"] : []
      listen = socket ? ["-s", socket] : ["-l", "127.0.0.1", "-p", port.to_s]
      [*listen, "-U", "0", "-t", "2", *user, *args]
    end

    def ready?
      command("version").start_with?("VERSION")
    end

    # One text-protocol command; returns the reply up to its terminator.
    # @param line [String] without the final "\r\n"
    # @return [String]
    def command(line)
      connect do |sock|
        sock.write("#{line}\r\n")
        read_reply(sock, ->(reply) { reply.match?(TERMINATOR) })
      end
    end

    # @return [Hash{String => String}] the server's `stats`
    def stats
      command("stats").scan(/^STAT (\S+) (\S+)\r$/).to_h
    end

    # @return [String, nil] the raw value stored under `key`
    def get(key)
      reply = command("get #{key}")
      reply[/\AVALUE \S+ \d+ \d+\r\n(.*)\r\nEND\r\n\z/m, 1]
    end

    # Removes `key` whoever stored it (as an eviction or expiry would).
    # @return [Boolean] true if it was there
    def delete(key)
      command("delete #{key}") == "DELETED\r\n"
    end

    # @return [String] the server's reply
    def flush_all
      command("flush_all")
    end
  end

  # redis-server with no persistence, in a private directory.
  class Redis < Server
    def program
      "redis-server"
    end

    def argv
      listen = socket ? ["--port", "0", "--unixsocket", socket] : ["--port", port.to_s, "--bind", "127.0.0.1"]
      [*listen, "--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--logfile", "", *args]
    end

    def needs_dir?
      true
    end

    def ready?
      command("PING").start_with?("+PONG")
    end

    # @return [String] a redis:// URL for clients
    def url
      socket ? "unix://#{socket}" : "redis://127.0.0.1:#{port}"
    end

    # One command in RESP; returns the raw reply (a simple string, error,
    # integer or bulk string).
    # @return [String]
    def command(*words)
      connect do |sock|
        sock.write("*#{words.size}\r\n" + words.map { |w| "$#{w.to_s.bytesize}\r\n#{w}\r\n" }.join)
        read_reply(sock, method(:complete?))
      end
    end

    # @param section [String, nil] e.g. "stats", "commandstats"
    # @return [Hash{String => String}] INFO's fields
    def info(section = nil)
      command(*["INFO", section].compact).scan(/^([^#:\r\n]+):([^\r\n]*)\r$/).to_h
    end

    # @return [String, nil] redis-server's version
    def version
      `#{program} --version 2>&1`.strip[/v=(\S+)/, 1]
    end

    private

    def complete?(reply)
      case reply[0]
      when nil then false
      when "+", "-", ":" then reply.end_with?("\r\n")
      when "$"
        len = reply[/\A\$(-?\d+)\r\n/, 1]
        return false unless len
        return true if len.to_i.negative?

        reply.bytesize >= reply.index("\r\n") + 2 + len.to_i + 2
      else true
      end
    end
  end

  # mariadbd on a free loopback port and a unix socket in a private
  # directory, on an empty datadir (no mariadb-install-db: named locks need
  # no tables), without grant tables unless asked: accepting connections in
  # about 0.2 s (MARIADB_NOTES.md). The metadata_lock_info plugin is loaded
  # so that a lock's holder can be read (store_mariadb.c). A restart keeps
  # the port and the socket path and starts from an empty datadir (a crash
  # and a fresh start: every session and lock gone).
  #
  #   db = Servers::MariaDB.shared          # one for the suite, started on first use
  #   db.url                                # "mysql://root@127.0.0.1:40123"
  #   db.socket_path                        # ".../sock"
  #   db.sql("SELECT IS_USED_LOCK('x')")    # => [["NULL"]] (the mariadb client, batch mode)
  #
  # With grant_tables: true, mariadb-install-db prepares the datadir once (a
  # few seconds) and {#add_user} creates accounts, for credential checks.
  class MariaDB < Server
    START_TIMEOUT = 30
    # The flags of MARIADB_NOTES.md: a small, fast, throwaway server.
    FLAGS = %w[--skip-log-bin --skip-name-resolve --performance-schema=0 --innodb-buffer-pool-size=6M
               --innodb-log-file-size=4M --innodb-fast-shutdown=2 --innodb-buffer-pool-dump-at-shutdown=0
               --innodb-buffer-pool-load-at-startup=0 --innodb-use-native-aio=0
               --innodb-data-file-path=ibdata1:4M:autoextend --innodb-temp-data-file-path=ibtmp1:4M:autoextend
               --innodb-doublewrite=0 --innodb-flush-log-at-trx-commit=0 --skip-innodb-adaptive-hash-index
               --plugin-load-add=metadata_lock_info --max-connections=1000].freeze

    @shared = nil
    @shared_mutex = Mutex.new

    class << self
      # The suite's MariaDB, started by the first spec that asks for it (a
      # suite that runs no MariaDB spec never starts one); stopped at exit.
      # @return [MariaDB]
      def shared
        @shared_mutex.synchronize do
          @shared = nil if @shared && @shared.owner != Process.pid
          @shared ||= new.start
        end
      end

      # @return [Boolean] true when mariadbd and the mariadb client are installed
      def available?
        system("command -v mariadbd >/dev/null 2>&1 && command -v mariadb >/dev/null 2>&1")
      end
    end

    # @param grant_tables [Boolean] a server with accounts (see {#add_user})
    def initialize(grant_tables: false, **options)
      @grant_tables = grant_tables
      @restarting = false
      super(**options)
    end

    def program
      "mariadbd"
    end

    def needs_dir?
      true
    end

    def keep_dir_on_stop?
      @restarting
    end

    # The same port and socket, every session and lock gone.
    # @return [self]
    def restart
      @restarting = true
      stop
      start
    ensure
      @restarting = false
    end

    # @return [String] the unix socket it listens on (beside the TCP port)
    def socket_path
      File.join(dir, "sock")
    end

    # @return [String] a mysql:// URL for MegaMutex (root, no password), over TCP
    def url
      "mysql://root@127.0.0.1:#{port}"
    end

    # @return [String] the same server through its unix socket
    def socket_url
      "mysql://root@localhost/?socket=#{socket_path}"
    end

    def argv
      prepare_datadir
      grants = @grant_tables ? [] : ["--skip-grant-tables"]
      ["--no-defaults", "--datadir=#{dir}/data", "--socket=#{socket_path}", "--port=#{port}",
       "--bind-address=127.0.0.1", "--pid-file=#{dir}/pid", "--tmpdir=#{dir}/tmp", "--log-error=#{dir}/err.log",
       "--user=root", *grants, *FLAGS, *args]
    end

    # Ready once the server's greeting (protocol version 10) arrives on the socket.
    def ready?
      return false unless File.socket?(socket_path)

      Socket.unix(socket_path) do |sock|
        greeting = read_reply(sock, ->(reply) { reply.bytesize >= 5 })
        greeting.getbyte(4) == 10
      end
    end

    # Runs `query` with the mariadb client (batch mode, as root over the
    # socket) and returns its rows, each an Array of Strings ("NULL" for NULL).
    # @param query [String]
    # @return [Array<Array<String>>]
    # @raise [RuntimeError] with the client's message when it fails
    def sql(query)
      out, err, status = Open3.capture3("mariadb", "--no-defaults", "-uroot", "-S", socket_path, "-N", "-B", "-e", query)
      raise "mariadb -e #{query.inspect}: #{err.strip}" unless status.success?

      out.lines.map { |line| line.chomp.split("\t", -1) }
    end

    # The connection id holding the named lock `name`, or nil.
    # @return [Integer, nil]
    def lock_holder(name)
      id = sql("SELECT IS_USED_LOCK('#{name.gsub("'", "''")}')").dig(0, 0)
      id.nil? || id == "NULL" ? nil : Integer(id)
    end

    # The server's sessions ([id, command, info] of each, this query's own left out).
    # @return [Array<Array<String>>]
    def sessions
      sql("SELECT ID, COMMAND, COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()")
    end

    # Creates an account (a server with grant_tables only).
    # @return [void]
    def add_user(user, password)
      sql("CREATE USER '#{user}'@'%' IDENTIFIED BY '#{password}'; CREATE USER '#{user}'@'localhost' IDENTIFIED BY '#{password}'")
    end

    private

    def prepare_datadir
      data = File.join(dir, "data")
      return if @grant_tables && File.directory?(File.join(data, "mysql"))

      FileUtils.rm_rf([data, File.join(dir, "tmp")])
      FileUtils.mkdir_p([data, File.join(dir, "tmp")])
      return unless @grant_tables

      out, status = Open3.capture2e("mariadb-install-db", "--no-defaults", "--datadir=#{data}", "--user=root",
                                    "--auth-root-authentication-method=normal", "--skip-test-db")
      raise "mariadb-install-db failed: #{out}" unless status.success?
    end
  end

  # Server kinds by name, for {Servers.start}.
  KINDS = { memcached: Memcached, redis: Redis, mariadb: MariaDB }.freeze
end
