# frozen_string_literal: true

require "socket"
require "timeout"
require "tmpdir"
require "fileutils"
require_relative "../spec/support/memcached_server"

module Bench
  # A private redis-server on a free loopback port, for the redlock peer:
  # no persistence (--save "" --appendonly no), started in its own process
  # group and killed by pid at exit (never by name).
  class RedisServer
    attr_reader :port, :pid

    @all = []
    class << self
      attr_reader :all
    end
    at_exit { RedisServer.all.each(&:stop) }

    def self.available?
      system("command -v redis-server >/dev/null 2>&1")
    end

    def initialize
      @pid = nil
      @dir = nil
      self.class.all << self
    end

    def url
      "redis://127.0.0.1:#{port}"
    end

    def start
      attempts = 0
      begin
        attempts += 1
        @port = MemcachedServer.free_port
        @dir ||= Dir.mktmpdir("bench-redis")
        @pid = Process.spawn("redis-server", "--port", port.to_s, "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", @dir, "--daemonize", "no", "--logfile", "",
                             out: File::NULL, err: File::NULL, pgroup: true)
        wait_until_up
      rescue Errno::ECONNREFUSED, Timeout::Error
        stop
        raise if attempts >= 5

        retry
      end
      self
    end

    def stop
      if @pid
        pid = @pid
        @pid = nil
        Process.kill(:KILL, pid) rescue nil
        Process.waitpid(pid) rescue nil
      end
      FileUtils.rm_rf(@dir) if @dir
      @dir = nil
    end

    def running?
      return false unless @pid

      Process.waitpid(@pid, Process::WNOHANG).nil?
    rescue Errno::ECHILD
      false
    end

    # One command in RESP; returns the raw reply.
    def command(*args)
      Socket.tcp("127.0.0.1", port, connect_timeout: 2) do |sock|
        sock.write("*#{args.size}\r\n" + args.map { |a| "$#{a.to_s.bytesize}\r\n#{a}\r\n" }.join)
        reply = +""
        Timeout.timeout(5) do
          loop do
            reply << sock.readpartial(65_536)
            break if complete?(reply)
          end
        end
        reply
      end
    end

    # Commands run only inside redlock-rb's Lua scripts: the client never
    # sends them itself, so they are not requests on the wire.
    SCRIPT_ONLY = %w[get set exists del pttl].freeze

    # Requests clients sent so far (INFO commandstats), without the commands
    # that ran inside Lua scripts and without INFO itself.
    def requests
      command("INFO", "commandstats").scan(/^cmdstat_([^:]+):calls=(\d+)/).sum do |name, calls|
        SCRIPT_ONLY.include?(name) || name == "info" ? 0 : calls.to_i
      end
    end

    # Commands processed so far (INFO stats total_commands_processed), script
    # internals included.
    def commands_processed
      command("INFO", "stats")[/total_commands_processed:(\d+)/, 1].to_i
    end

    def version
      `redis-server --version 2>&1`.strip[/v=(\S+)/, 1]
    end

    private

    def complete?(reply)
      case reply[0]
      when "+", "-", ":" then reply.end_with?("\r\n")
      when "$"
        len = reply[/\A\$(-?\d+)\r\n/, 1]
        return false unless len
        return true if len.to_i.negative?

        reply.bytesize >= reply.index("\r\n") + 2 + len.to_i + 2
      else true
      end
    end

    def wait_until_up
      Timeout.timeout(5) do
        loop do
          raise Errno::ECONNREFUSED, "redis-server exited" unless running?

          begin
            return if command("PING").start_with?("+PONG")
          rescue Errno::ECONNREFUSED, Errno::ECONNRESET, EOFError
            sleep 0.01
          end
        end
      end
    end
  end
end
