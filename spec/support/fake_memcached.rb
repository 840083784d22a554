# frozen_string_literal: true

require "socket"

# A scriptable fake memcached speaking the text protocol on a free loopback
# port (127.0.0.1 only), to play the hostile server.
#
# Unscripted, it behaves like a small memcached: add, set, cas, gets/get,
# delete, version, with noreply and expiries (relative seconds, or an
# absolute Unix time above 30 days, which expires at once when past). A
# script replaces the answer to one command:
#
#   fake = FakeMemcached.new.start
#   fake.on("gets") { |cmd| cmd.reply("SERVER_ERROR out of memory writing get response\r\n") }
#   fake.on("gets") { |cmd| cmd.trickle(cmd.default_reply, every: 0.2) }  # one byte at a time
#   fake.on("gets") { |cmd| cmd.stall }                                  # never answers
#   fake.on("cas", times: 1) { |cmd| cmd.apply; cmd.close }               # applied, reply lost
#   fake.on("gets") { |cmd| cmd.reply("VALUE #{cmd.key} 0 -1 5\r\nabcde\r\nEND\r\n") }
#   ...
#   fake.stop
#
# A handler gets a {Command}: its name, words, key, data block (for storage
# commands), and ways to answer: reply, trickle, stall, close, apply (run
# the normal behaviour, replying nothing), default_reply (run it and return
# the reply it would send). A handler that neither replies nor closes sends
# nothing. `times:` limits how often a script fires (then the default runs
# again); `if:` narrows it to commands for which the block is truthy.
#
# Every command received is recorded in #commands (names, in order).
# #stop closes every socket, wakes stalled handlers and joins all threads.
class FakeMemcached
  # The data commands carry after their line.
  STORAGE = %w[set add replace append prepend cas].freeze

  # One command received on a connection, with the means to answer it.
  class Command
    attr_reader :name, :words, :data, :fake

    def initialize(fake, io, words, data)
      @fake = fake
      @io = io
      @words = words
      @name = words.first.to_s
      @data = data
      @closed = false
    end

    def key
      @words[1]
    end

    def noreply?
      @words.last == "noreply"
    end

    def closed?
      @closed
    end

    # Writes `bytes` at once.
    def reply(bytes)
      @io.write(bytes)
    rescue IOError, SystemCallError
      nil
    end

    # Writes `bytes` one byte every `every` seconds (until stopped).
    def trickle(bytes, every: 0.2)
      bytes.each_char do |ch|
        return if @fake.stopping?

        reply(ch)
        @fake.pause(every)
      end
    end

    # Answers nothing until the fake stops (or `seconds` pass).
    def stall(seconds = nil)
      @fake.pause(seconds)
    end

    # Closes the connection (after whatever was written).
    def close
      @closed = true
      @io.close unless @io.closed?
    rescue IOError, SystemCallError
      nil
    end

    # Runs the normal behaviour; returns the reply it would have sent.
    def default_reply
      @fake.execute(self)
    end

    # Runs the normal behaviour and sends nothing.
    def apply
      default_reply
      nil
    end
  end

  attr_reader :port, :commands

  def initialize
    @scripts = []
    @items = {}
    @cas = 0
    @commands = []
    @lock = Mutex.new
    @stop_cv = ConditionVariable.new
    @stopping = false
    @threads = []
    @clients = []
  end

  # @return [String] "127.0.0.1:port"
  def address
    "127.0.0.1:#{port}"
  end

  def start
    @server = TCPServer.new("127.0.0.1", 0)
    @port = @server.addr[1]
    @threads << Thread.new { accept_loop }
    self
  end

  # Scripts the answer to `name` (a command word such as "gets" or "cas").
  # @param times [Integer, nil] fire this many times, then fall back
  # @param if [Proc, nil] fire only for commands it accepts
  def on(name, times: nil, if: nil, &handler)
    cond = binding.local_variable_get(:if)
    @lock.synchronize { @scripts << { name: name.to_s, left: times, cond: cond, handler: handler } }
    self
  end

  # Forgets every script.
  def reset
    @lock.synchronize { @scripts.clear }
  end

  # The raw item stored under `key`, or nil.
  def value(key)
    @lock.synchronize { live(key)&.first }
  end

  # Stores `value` under `key` as memcached's set would.
  def put(key, value, ttl: 0)
    @lock.synchronize { store(key, value, ttl) }
  end

  # How many commands named `name` were received.
  def count(name)
    @lock.synchronize { @commands.count(name.to_s) }
  end

  def stopping?
    @stopping
  end

  # Sleeps `seconds` (forever when nil) or until #stop.
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

  def stop
    @lock.synchronize do
      @stopping = true
      @stop_cv.broadcast
    end
    @server&.close unless @server&.closed?
    @lock.synchronize { @clients.dup }.each { |c| c.close unless c.closed? }
    @threads.each { |t| t.join(5) || t.kill }
    nil
  end

  # The normal behaviour of `cmd`; returns the reply (String, possibly empty).
  # @api private
  def execute(cmd)
    w = cmd.words
    reply = @lock.synchronize do
      case cmd.name
      when "add" then live(w[1]) ? "NOT_STORED\r\n" : (store(w[1], cmd.data, w[3].to_i) && "STORED\r\n")
      when "set" then store(w[1], cmd.data, w[3].to_i) && "STORED\r\n"
      when "cas"
        item = live(w[1])
        if item.nil? then "NOT_FOUND\r\n"
        elsif item[1] != w[5].to_i then "EXISTS\r\n"
        else
          store(w[1], cmd.data, w[3].to_i) && "STORED\r\n"
        end
      when "get", "gets"
        w[1..].filter_map do |k|
          item = live(k)
          next unless item

          cas = cmd.name == "gets" ? " #{item[1]}" : ""
          "VALUE #{k} 0 #{item[0].bytesize}#{cas}\r\n#{item[0]}\r\n"
        end.join + "END\r\n"
      when "delete" then @items.delete(w[1]) ? "DELETED\r\n" : "NOT_FOUND\r\n"
      when "version" then "VERSION 1.6.18-fake\r\n"
      else "ERROR\r\n"
      end
    end
    cmd.noreply? ? "" : reply
  end

  private

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Called with @lock held.
  def live(key)
    item = @items[key]
    return nil unless item
    return item if item[2].nil? || item[2] > Time.now.to_f

    @items.delete(key)
    nil
  end

  # Called with @lock held.
  def store(key, value, ttl)
    expires = if ttl.zero? then nil
              elsif ttl > 2_592_000 then ttl.to_f
              else Time.now.to_f + ttl
              end
    if expires && expires <= Time.now.to_f
      @items.delete(key)
    else
      @items[key] = [value, @cas += 1, expires]
    end
    true
  end

  def accept_loop
    until @stopping
      client = begin
        @server.accept
      rescue IOError, SystemCallError
        break
      end
      @lock.synchronize do
        @clients << client
        @threads << Thread.new(client) { |c| serve(c) }
      end
    end
  end

  def serve(io)
    until @stopping
      line = io.gets("\r\n", 4096)
      break if line.nil?

      words = line.chomp("\r\n").split(" ")
      next if words.empty?

      data = nil
      if STORAGE.include?(words.first)
        data = io.read(words[4].to_i + 2)
        break if data.nil?

        data = data.chomp("\r\n")
      end
      cmd = Command.new(self, io, words, data)
      @lock.synchronize { @commands << cmd.name }
      handler = script_for(cmd)
      if handler
        handler.call(cmd)
      else
        cmd.reply(execute(cmd))
      end
      break if cmd.closed?
    end
  rescue IOError, SystemCallError
    nil
  ensure
    io.close unless io.closed?
  end

  # The newest script that fires for `cmd` (conditions run outside the
  # lock, so they may look at the fake).
  def script_for(cmd)
    candidates = @lock.synchronize { @scripts.select { |s| s[:name] == cmd.name }.reverse }
    candidates.each do |script|
      next unless script[:cond].nil? || script[:cond].call(cmd)

      fire = @lock.synchronize do
        next false if script[:left] && !script[:left].positive?

        script[:left] -= 1 if script[:left]
        true
      end
      return script[:handler] if fire
    end
    nil
  end
end
