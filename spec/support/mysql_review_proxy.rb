# frozen_string_literal: true

require "socket"

# A TCP proxy in front of a REAL MariaDB that injects faults into the reply
# to a statement (the MySQL protocol's COM_QUERY) whose text matches a
# pattern. The handshake and every other packet pass through untouched.
# Listens on 127.0.0.1 only, on a free port; each client connection gets its
# own upstream connection.
#
#   proxy = MysqlReviewProxy.new(db.port).start
#   proxy.inject(/RELEASE_LOCK/, :stall)          # the reply never comes (until #stop)
#   proxy.inject(/GET_LOCK/, :cut, times: 1)      # half the reply's first bytes, then both ends closed
#   proxy.inject(/IS_USED_LOCK/, :drop_and_close) # forwarded, the reply discarded, both ends closed
#   proxy.inject(/GET_LOCK/, :close_before)       # both ends closed, the statement never sent
#   proxy.fired(:stall)                           # how often a fault fired
#   proxy.stop
#
# A fault closes the upstream connection too, except :stall, which keeps it
# open (a middlebox that stops forwarding: the server does not see the
# client go).
class MysqlReviewProxy
  COM_QUERY = 3

  attr_reader :port

  def initialize(upstream_port, upstream_host: "127.0.0.1")
    @upstream = [upstream_host, upstream_port]
    @faults = []
    @fired = Hash.new(0)
    @lock = Mutex.new
    @threads = []
    @sockets = []
    @stopping = false
  end

  def start
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @threads << Thread.new { accept_loop }
    self
  end

  # @return [String] a mysql:// URL through the proxy
  def url
    "mysql://root@127.0.0.1:#{port}"
  end

  # @param pattern [Regexp] matched against the statement's text
  # @param fault [Symbol] :stall, :cut, :drop_and_close or :close_before
  # @param times [Integer, nil] how often; nil: every time
  def inject(pattern, fault, times: nil)
    @lock.synchronize { @faults << { pattern: pattern, fault: fault, left: times } }
    self
  end

  def clear
    @lock.synchronize { @faults.clear }
  end

  # @return [Integer] how often `fault` fired
  def fired(fault)
    @lock.synchronize { @fired[fault] }
  end

  def stop
    @stopping = true
    @server&.close unless @server&.closed?
    @lock.synchronize { @sockets.dup }.each { |s| s.close unless s.closed? }
    @threads.each { |t| t.join(5) || t.kill }
    nil
  end

  private

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

  # One connection: packets from the client are parsed (4-byte header:
  # 3-byte length, sequence id), bytes from the server are passed on or
  # faulted while a matched statement's reply is due.
  def relay(client)
    upstream = Socket.tcp(*@upstream, connect_timeout: 2)
    @lock.synchronize { @sockets << upstream }
    pending = "".b
    fault = nil
    loop do
      ready, = IO.select([client, upstream])
      if ready.include?(client)
        data = client.read_nonblock(65_536, exception: false)
        break if data.nil?
        next if data == :wait_readable

        pending << data
        while pending.bytesize >= 4
          len = pending.getbyte(0) | (pending.getbyte(1) << 8) | (pending.getbyte(2) << 16)
          break if pending.bytesize < 4 + len

          packet = pending.slice!(0, 4 + len)
          fault = fault_for(packet) if packet.getbyte(3).zero? && packet.getbyte(4) == COM_QUERY
          return if fault == :close_before

          upstream.write(packet)
        end
      end
      next unless ready.include?(upstream)

      data = upstream.read_nonblock(65_536, exception: false)
      break if data.nil?
      next if data == :wait_readable

      case fault
      when nil then client.write(data)
      when :stall then sleep 0.05 until @stopping
      when :cut
        client.write(data.byteslice(0, [data.bytesize / 2, 1].max))
        return
      when :drop_and_close then return
      end
      break if @stopping
    end
  rescue IOError, SystemCallError
    nil
  ensure
    [client, upstream].each { |s| s.close if s && !s.closed? }
  end

  def fault_for(packet)
    text = packet.byteslice(5..).to_s
    @lock.synchronize do
      f = @faults.find { |x| x[:pattern].match?(text) && (x[:left].nil? || x[:left].positive?) }
      next nil if f.nil?

      f[:left] -= 1 if f[:left]
      @fired[f[:fault]] += 1
      f[:fault]
    end
  end
end
