# frozen_string_literal: true

require "socket"
require "timeout"

# A real memcached on a free loopback port, started and stopped by pid (never
# a fixed port, never killall). Used by the suite, the demo and the benches.
class MemcachedServer
  attr_reader :port, :pid, :args

  @all = []
  class << self
    attr_reader :all

    def stop_all
      all.each(&:stop)
    end
  end
  at_exit { MemcachedServer.stop_all }

  # @param args [Array<String>] extra memcached flags, e.g. ["-M", "-m", "1"]
  def initialize(args: [], port: nil)
    @args = args
    @port = port
    @pid = nil
    self.class.all << self
  end

  def address
    "127.0.0.1:#{port}"
  end

  def start
    attempts = 0
    begin
      attempts += 1
      @port ||= self.class.free_port
      user = Process.uid.zero? ? ["-u", "root"] : []
      @pid = Process.spawn("memcached", "-l", "127.0.0.1", "-p", port.to_s, "-U", "0", "-t", "2", *user, *args,
                           out: File::NULL, err: File::NULL, pgroup: true)
      wait_until_up
    rescue Errno::ECONNREFUSED, Timeout::Error
      stop
      raise if attempts >= 5

      @port = nil
      retry
    end
    self
  end

  def running?
    return false unless @pid

    Process.waitpid(@pid, Process::WNOHANG).nil?
  rescue Errno::ECHILD
    false
  end

  def stop
    return unless @pid

    pid = @pid
    @pid = nil
    Process.kill(:CONT, pid) rescue nil
    Process.kill(:KILL, pid) rescue nil
    Process.waitpid(pid) rescue nil
  end

  # A restart on the same port: every item is lost, as after a crash.
  def restart
    stop
    start
  end

  # SIGSTOP, then wait until every thread of the server is stopped: kill
  # returns before a thread busy on another core has stopped, and such a
  # thread may still answer a request or two.
  def pause
    Process.kill(:STOP, @pid)
    Timeout.timeout(5) { sleep 0.001 until thread_states.all?("T") }
  end

  def resume
    Process.kill(:CONT, @pid)
  end

  # One text-protocol command; returns the reply up to END/other terminator.
  def command(line)
    Socket.tcp("127.0.0.1", port, connect_timeout: 2) do |sock|
      sock.write("#{line}\r\n")
      reply = +""
      Timeout.timeout(5) do
        reply << sock.readpartial(65_536) until reply.match?(/(END|OK|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|ERROR[^\r]*|VERSION [^\r]*|HD[^\r]*|EN)\r\n\z/)
      end
      reply
    end
  end

  def stats
    command("stats").scan(/^STAT (\S+) (\S+)\r$/).to_h
  end

  # Raw value stored under `key`, or nil.
  def get(key)
    reply = command("get #{key}")
    reply[/\AVALUE \S+ \d+ \d+\r\n(.*)\r\nEND\r\n\z/m, 1]
  end

  def flush_all
    command("flush_all")
  end

  def self.free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  private

  # The scheduler states ("R", "S", "T", ...) of the server's threads.
  def thread_states
    Dir["/proc/#{@pid}/task/*/stat"].filter_map do |path|
      File.read(path)[/\) (\S)/, 1]
    rescue Errno::ENOENT, Errno::ESRCH
      nil
    end
  end

  def wait_until_up
    Timeout.timeout(5) do
      loop do
        raise Errno::ECONNREFUSED, "memcached exited" unless running?

        begin
          return if command("version").start_with?("VERSION")
        rescue Errno::ECONNREFUSED, Errno::ECONNRESET, EOFError
          sleep 0.01
        end
      end
    end
  end
end
