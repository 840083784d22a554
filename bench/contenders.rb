# frozen_string_literal: true

require "securerandom"
require "logger"
require "socket"
require "stringio"

# The locks the bench compares. Each contender is built in the process that
# uses it (after fork), so every process has its own connections:
#
#   contender = Bench::Contenders.build(name, ctx)
#   contender.synchronize(key) { ... }   # waits until it holds `key`, runs the block, releases
#
# ctx: { memcached: "127.0.0.1:PORT", redis: "redis://127.0.0.1:PORT" or nil,
#        backoff_min:, backoff_max:, lock_ttl: }
#
# Waiting: MegaMutex waits its own way (backoff_min doubling to backoff_max,
# equal jitter). The peers are given a pause of the same order, so contention
# figures compare protocols rather than polling intervals (their own defaults
# would be slower: redlock-rb's is 200 ms + up to 50 ms, tried 3 times):
#   dalli lock  the same equal-jitter exponential backoff as MegaMutex
#   suo         acquisition_delay = backoff_max (suo sleeps rand(0..delay))
#   redlock-rb  retry_delay = backoff_max/2, retry_jitter = backoff_max/2
#               (a pause uniform in [max/2, max], MegaMutex's steady state)
module Bench
  module Contenders
    NAMES = %w[MegaMutex dalli suo redlock].freeze
    PEERS = %w[dalli suo redlock].freeze
    LABELS = {
      "floor" => "floor (C add+delete)",
      "MegaMutex" => "MegaMutex",
      "MegaMutex C" => "MegaMutex, C calls only",
      "dalli" => "dalli lock (add/get/delete)",
      "suo" => "suo (Suo::Client::Memcached)",
      "redlock" => "redlock-rb (1 redis)"
    }.freeze
    # Which server a contender talks to (for request counts).
    SERVER = { "floor" => :memcached, "MegaMutex" => :memcached, "MegaMutex C" => :memcached, "dalli" => :memcached,
               "suo" => :memcached, "redlock" => :redis }.freeze

    def self.build(name, ctx)
      case name
      when "MegaMutex" then MegaMutexLock.new(ctx)
      when "MegaMutex C" then MegaMutexNative.new(ctx)
      when "dalli" then DalliLock.new(ctx)
      when "suo" then SuoLock.new(ctx)
      when "redlock" then RedlockLock.new(ctx)
      else raise ArgumentError, "unknown contender #{name.inspect}"
      end
    end

    # Runs the block with $stdout and $stderr swallowed.
    def self.quietly
      out = $stdout
      err = $stderr
      $stdout = StringIO.new
      $stderr = StringIO.new
      yield
    ensure
      $stdout = out
      $stderr = err
    end

    # The MegaMutex settings the bench runs with: the gem's defaults, or
    # BENCH_BACKOFF_MIN / BENCH_BACKOFF_MAX / BENCH_LOCK_TTL (seconds).
    def self.configure_megamutex(memcached)
      MegaMutex.configure do |c|
        c.memcache_servers = [memcached]
        c.namespace = "bench"
        c.logger = nil
        c.backoff_min = Float(ENV["BENCH_BACKOFF_MIN"]) if ENV["BENCH_BACKOFF_MIN"].to_s != ""
        c.backoff_max = Float(ENV["BENCH_BACKOFF_MAX"]) if ENV["BENCH_BACKOFF_MAX"].to_s != ""
        c.lock_ttl = Integer(ENV["BENCH_LOCK_TTL"]) if ENV["BENCH_LOCK_TTL"].to_s != ""
      end
    end

    # MegaMutex.with_distributed_mutex(key) { }
    class MegaMutexLock
      def initialize(ctx)
        Contenders.configure_megamutex(ctx[:memcached])
      end

      def synchronize(key, &block)
        MegaMutex.with_distributed_mutex(key, &block)
      end
    end

    # MegaMutex's C calls alone - Native::Client#_acquire, the block,
    # #_release - called from Ruby without the gem's Ruby layer (no Lock,
    # reentrancy, renewer, logging or events). Uncontended cycle only: it
    # splits MegaMutex's cycle into what the C extension costs and what the
    # Ruby API adds on top.
    class MegaMutexNative
      def initialize(ctx)
        Contenders.configure_megamutex(ctx[:memcached])
        config = MegaMutex.configuration
        @client = MegaMutex::Native::Client.new(config.server_addresses, 1000, 1000, 1)
        @state = Object.new
        @token = "bench:#{Process.pid}:native"
        @ttl = config.lock_ttl + MegaMutex::Lock::WIRE_MARGIN
        @bmin = config.backoff_min
        @bmax = config.backoff_max
        @keys = Hash.new { |h, k| h[k] = MegaMutex::Key.for(config.namespace, k) }
      end

      def synchronize(key)
        k = @keys[key]
        @client._acquire(@state, k, @token, @ttl, nil, @bmin, @bmax)
        begin
          yield
        ensure
          @client._release(k, @token, @state.instance_variable_get(:@version))
        end
      end
    end

    # Equal-jitter exponential backoff, as MegaMutex waits: first pause in
    # [min/2, min], doubling up to [max/2, max].
    class Backoff
      def initialize(min, max)
        @min = min
        @max = max
        @cur = min
      end

      def pause
        p = @cur / 2 + rand * @cur / 2
        @cur = [@cur * 2, @max].min
        sleep p
      end
    end

    # A plain lock over dalli, written here: add(key, token, ttl) takes it;
    # release reads the key and deletes it if it still holds our token (get +
    # delete: not atomic, the usual hand-written memcached lock).
    class DalliLock
      def initialize(ctx)
        require "dalli"
        Dalli.logger = Logger.new(nil)
        @client = Dalli::Client.new(ctx[:memcached], protocol: :meta, socket_timeout: 1.0, namespace: "bench-dalli")
        @ttl = ctx[:lock_ttl]
        @bmin = ctx[:backoff_min]
        @bmax = ctx[:backoff_max]
        @prefix = "#{Socket.gethostname}:#{Process.pid}:"
      end

      def synchronize(key)
        token = @prefix + SecureRandom.hex(8)
        backoff = nil
        until @client.add(key, token, @ttl, raw: true)
          (backoff ||= Backoff.new(@bmin, @bmax)).pause
        end
        begin
          yield
        ensure
          @client.delete(key) if @client.get(key) == token
        end
      end
    end

    # suo 0.4 over dalli: Suo::Client::Memcached#lock { } (get_cas + set_cas
    # to take, get_cas + set_cas to release: optimistic, via CAS).
    class SuoLock
      def initialize(ctx)
        require "dalli"
        Contenders.quietly { require "suo" } # suo requires dalli/cas/client: dalli puts that it is obsolete
        Dalli.logger = Logger.new(nil)
        @dalli = Dalli::Client.new(ctx[:memcached], protocol: :meta, socket_timeout: 1.0, namespace: "bench-suo")
        @options = { client: @dalli, acquisition_timeout: 3600, acquisition_delay: ctx[:backoff_max],
                     ttl: ctx[:lock_ttl], stale_lock_expiration: ctx[:lock_ttl] }
        @locks = {}
      end

      def synchronize(key, &block)
        suo = (@locks[key] ||= Suo::Client::Memcached.new(key, @options.dup))
        loop do
          token = suo.lock
          next if token.nil? # acquisition_timeout passed: try again

          begin
            return block.call
          ensure
            suo.unlock(token)
          end
        end
      end
    end

    # redlock-rb 2.1 against one local redis (quorum of 1): SET NX PX by Lua
    # script to take, compare-and-DEL script to release.
    class RedlockLock
      def initialize(ctx)
        raise "redlock needs redis-server (run bench/setup)" unless ctx[:redis]

        require "redlock"
        half_ms = (ctx[:backoff_max] * 1000 / 2.0).round.clamp(1, nil)
        @client = Redlock::Client.new([ctx[:redis]], retry_count: 1_000_000, retry_delay: half_ms,
                                                      retry_jitter: half_ms, redis_timeout: 1.0)
        @ttl_ms = ctx[:lock_ttl] * 1000
      end

      def synchronize(key)
        info = nil
        info = @client.lock(key, @ttl_ms) until info
        begin
          yield
        ensure
          @client.unlock(info)
        end
      end
    end
  end
end
