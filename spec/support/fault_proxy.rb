# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a REAL memcached (text protocol) that injects
# faults per command. Listens on 127.0.0.1 only, on a free port; each client
# connection gets its own upstream connection.
#
#   proxy = FaultProxy.new(memcached.port).start
#   proxy.inject("gets", :server_error)                       # every gets
#   proxy.inject("gets", :server_error, message: "SERVER_ERROR out of memory writing get response")
#   proxy.inject("cas", :drop_and_close, times: 1)           # applied upstream, reply lost
#   proxy.inject("gets", :delay, seconds: 0.5)
#   proxy.inject("gets", :trickle, every: 0.2)               # reply one byte at a time
#   proxy.inject("gets", :stall)                              # reply never comes (until #stop)
#   proxy.inject("add", :close_before, times: 1)             # connection closed, nothing sent upstream
#   proxy.clear                                               # no more faults
#   proxy.stop
#
# Faults: :server_error (the reply is replaced by `message`), :drop_and_close
# (forwarded, the reply is discarded and the client's connection closed),
# :close_before (closed without forwarding), :delay (the reply is held
# `seconds`), :trickle (the reply is sent one byte every `every` seconds),
# :stall (never answered). `times:` limits how often a fault fires; `if:`
# (a block on the command's words) narrows it. A noreply command has no
# reply to replace: only :close_before applies to it.
#
# #log holds [command name, fault or nil] for every command forwarded.
# #stop closes every socket, wakes delayed replies and joins all threads.
class FaultProxy
  STORAGE = %w[set add replace append prepend cas].freeze
  # Reply lines that end a get/gets reply.
  GET_END = /\A(END|ERROR|SERVER_ERROR.*|CLIENT_ERROR.*)\r\n\z/

  attr_reader :port, :log

  def initialize(upstream_port, upstream_host: "127.0.0.1")
    @upstream = [upstream_host, upstream_port]
    @faults = []
    @log = []
    @lock = Mutex.new
    @stop_cv = ConditionVariable.new
    @stopping = false
    @threads = []
    @sockets = []
  end

  def address
    "127.0.0.1:#{port}"
  end

  def start
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @threads << Thread.new { accept_loop }
    self
  end

  # Injects `fault` into the replies to command `name`.
  # @param times [Integer, nil] how often; nil: every time
  # @param if [Proc, nil] called with the command's words
  def inject(name, fault, times: nil, if: nil, message: "SERVER_ERROR injected fault", seconds: 0.5, every: 0.2)
    cond = binding.local_variable_get(:if)
    @lock.synchronize do
      @faults << { name: name.to_s, fault: fault, left: times, cond: cond, message: message,
                   seconds: seconds, every: every }
    end
    self
  end

  def clear
    @lock.synchronize { @faults.clear }
  end

  # How many times `fault` fired (for `name`, if given).
  def fired(fault, name = nil)
    @lock.synchronize { @log.count { |n, f| f == fault && (name.nil? || n == name) } }
  end

  def stop
    @lock.synchronize do
      @stopping = true
      @stop_cv.broadcast
    end
    @server&.close unless @server&.closed?
    @lock.synchronize { @sockets.dup }.each { |s| s.close unless s.closed? }
    @threads.each { |t| t.join(5) || t.kill }
    nil
  end

  private

  def pause(seconds)
    @lock.synchronize do
      deadline = seconds && monotonic + seconds
      until @stopping
        left = deadline && deadline - monotonic
        break if left && left <= 0

        @stop_cv.wait(@lock, left)
      end
    end
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def accept_loop
    until @stopping
      client = begin
        @server.accept
      rescue IOError, SystemCallError
        break
      end
      @lock.synchronize do
        @sockets << client
        @threads << Thread.new(client) { |c| relay(c) }
      end
    end
  end

  # A connection to the server behind the proxy, closed by #stop.
  def connect_upstream
    upstream = Socket.tcp(*@upstream, connect_timeout: 2)
    @lock.synchronize { @sockets << upstream }
    upstream
  end

  def relay(client)
    upstream = connect_upstream
    until @stopping
      line = client.gets("\r\n", 4096)
      break if line.nil?

      words = line.split(" ")
      next if words.empty?

      request = line.dup
      if STORAGE.include?(words.first)
        data = client.read(words[4].to_i + 2)
        break if data.nil?

        request << data
      end
      fault = fault_for(words)
      @lock.synchronize { @log << [words.first, fault && fault[:fault]] }
      break if fault && fault[:fault] == :close_before

      upstream.write(request)
      next if words.last == "noreply"

      reply = read_reply(upstream, words.first)
      break if reply.nil?
      break unless answer(client, reply, fault)
    end
  rescue IOError, SystemCallError
    nil
  ensure
    [client, upstream].each { |s| s.close if s && !s.closed? }
  end

  # Sends the (possibly faulted) reply; false when the connection must close.
  def answer(client, reply, fault)
    case fault && fault[:fault]
    when nil then client.write(reply)
    when :server_error then client.write("#{fault[:message]}\r\n")
    when :drop_and_close then return false
    when :delay
      pause(fault[:seconds])
      client.write(reply)
    when :trickle
      reply.each_char do |ch|
        return false if @stopping

        client.write(ch)
        pause(fault[:every])
      end
    when :stall
      pause(nil)
      return false
    else raise ArgumentError, "unknown fault #{fault[:fault].inspect}"
    end
    true
  end

  # One whole reply to `name` from memcached.
  def read_reply(upstream, name)
    first = upstream.gets("\r\n")
    return nil if first.nil?
    return first unless %w[get gets].include?(name)

    reply = first.dup
    line = first
    until line.match?(GET_END)
      raise IOError, "unexpected reply #{line.inspect}" unless line.start_with?("VALUE ")

      reply << upstream.read(line.split(" ")[3].to_i + 2)
      line = upstream.gets("\r\n")
      return nil if line.nil?

      reply << line
    end
    reply
  end

  def fault_for(words)
    candidates = @lock.synchronize { @faults.select { |f| f[:name] == words.first }.reverse }
    candidates.each do |f|
      next unless f[:cond].nil? || f[:cond].call(words)

      fire = @lock.synchronize do
        next false if f[:left] && !f[:left].positive?

        f[:left] -= 1 if f[:left]
        true
      end
      return f if fire
    end
    nil
  end
end
