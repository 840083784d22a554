# frozen_string_literal: true

# The locks bench/mysql.rb compares, all on the same private mariadbd (and
# MegaMutex :memcached beside them). Each is built in the process that uses
# it (after fork), so every process has its own connections:
#
#   lock = Bench::MySQLContenders.build(name, servers)
#   lock.synchronize(key) { ... }   # waits until it holds `key`, runs the block, releases
#
# servers: { tcp: [host, port], socket: path, mysql_url:, mysql_socket_url:, memcached: "127.0.0.1:PORT" }
#
# How each one waits for a held lock:
#   MegaMutex :mysql     blocks in GET_LOCK on the server (in slices), woken by the release
#   with_advisory_lock   5.3 on MySQL/MariaDB tries GET_LOCK(name, 0) and, when that fails,
#                        sleeps rand(0.05..0.15) s and tries again until timeout_seconds
#                        (it has no server-side wait; lib/with_advisory_lock/base.rb)
#   AR GET_LOCK          a hand-written lock over the same ActiveRecord connection:
#                        SELECT GET_LOCK(name, 60) (waits in the server), RELEASE_LOCK
#   MegaMutex :memcached polls with its backoff (memcached cannot wait for a key)
module Bench
  module MySQLContenders
    NAMES = %w[mysql-tcp mysql-socket wal-tcp wal-socket getlock-tcp memcached].freeze
    LABELS = {
      "mysql-tcp" => "MegaMutex :mysql, TCP",
      "mysql-socket" => "MegaMutex :mysql, unix socket",
      "wal-tcp" => "with_advisory_lock, TCP",
      "wal-socket" => "with_advisory_lock, unix socket",
      "getlock-tcp" => "AR GET_LOCK(name, 60), TCP",
      "memcached" => "MegaMutex :memcached, TCP"
    }.freeze
    # MegaMutex's row => the with_advisory_lock row on the same transport.
    PAIRS = { "mysql-tcp" => "wal-tcp", "mysql-socket" => "wal-socket" }.freeze
    # Which server a contender talks to (for the request counts).
    SERVER = Hash.new(:mariadb).merge("memcached" => :memcached).freeze
    # The longest any contender waits for one lock (seconds): a run that
    # needs longer fails instead of hanging.
    TIMEOUT = 60

    def self.build(name, servers)
      case name
      when "mysql-tcp" then MegaMutexLock.new(backend: :mysql, url: servers.fetch(:mysql_url))
      when "mysql-socket" then MegaMutexLock.new(backend: :mysql, url: servers.fetch(:mysql_socket_url))
      when "memcached" then MegaMutexLock.new(backend: :memcached, url: servers.fetch(:memcached))
      when "wal-tcp" then AdvisoryLock.new(WalTcp, tcp(servers))
      when "wal-socket" then AdvisoryLock.new(WalSocket, socket: servers.fetch(:socket))
      when "getlock-tcp" then GetLock.new(GetLockTcp, tcp(servers))
      else raise ArgumentError, "unknown contender #{name.inspect} (known: #{NAMES.join(', ')})"
      end
    end

    def self.tcp(servers)
      host, port = servers.fetch(:tcp)
      { host: host, port: port }
    end

    # Loads ActiveRecord, trilogy and with_advisory_lock (the bench group of
    # the Gemfile) and defines the connection classes; false, with the reason
    # in `missing`, when one of them is not installed.
    def self.load_peers
      return true if defined?(@loaded) && @loaded

      require "active_record"
      require "trilogy"
      require "with_advisory_lock"
      ActiveRecord::Base.logger = nil
      # One abstract class per connection: each has its own pool.
      const_set(:WalTcp, Class.new(ActiveRecord::Base) { self.abstract_class = true })
      const_set(:WalSocket, Class.new(ActiveRecord::Base) { self.abstract_class = true })
      const_set(:GetLockTcp, Class.new(ActiveRecord::Base) { self.abstract_class = true })
      @loaded = true
    rescue LoadError => e
      @missing = "#{e.message} (the Gemfile's bench group: bin/setup --test or bench/setup installs it)"
      false
    end

    class << self
      attr_reader :missing
    end

    # MegaMutex.with_distributed_mutex(key, timeout: 60) { }, configured for
    # `backend` when built (one configuration per process: the cycle section
    # builds again when it turns to another MegaMutex row).
    class MegaMutexLock
      def initialize(backend:, url:)
        MegaMutex.configure do |c|
          c.backend = backend
          if backend == :mysql
            c.mysql_url = url
          else
            c.memcache_servers = [url]
          end
          c.namespace = "bench"
          c.logger = nil
        end
      end

      def synchronize(key, &block)
        MegaMutex.with_distributed_mutex(key, timeout: TIMEOUT, &block)
      end
    end

    # with_advisory_lock 5.3 over ActiveRecord 7.2 + trilogy:
    # Model.with_advisory_lock!(key, timeout_seconds: 60) { } (the bang form
    # raises when the lock was not had within the timeout, instead of
    # returning false).
    class AdvisoryLock
      def initialize(model, settings)
        @model = model
        @model.establish_connection(adapter: "trilogy", username: "root", **settings)
        @model.connection.verify!
      end

      def synchronize(key, &block)
        @model.with_advisory_lock!(key, timeout_seconds: TIMEOUT, &block)
      end
    end

    # A hand-written lock on the same kind of connection that waits in the
    # server: SELECT GET_LOCK(key, 60), the block, SELECT RELEASE_LOCK(key).
    # What with_advisory_lock would cost if it let GET_LOCK wait.
    class GetLock
      def initialize(model, settings)
        @model = model
        @model.establish_connection(adapter: "trilogy", username: "root", **settings)
        @conn = @model.connection
        @names = Hash.new { |h, k| h[k] = @conn.quote(k) }
      end

      def synchronize(key)
        name = @names[key]
        got = @conn.select_value("SELECT GET_LOCK(#{name}, #{TIMEOUT})")
        raise "GET_LOCK(#{name}, #{TIMEOUT}) returned #{got.inspect}" unless got == 1

        begin
          yield
        ensure
          @conn.select_value("SELECT RELEASE_LOCK(#{name})")
        end
      end
    end
  end
end
