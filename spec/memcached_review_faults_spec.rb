# frozen_string_literal: true

require "socket"
require_relative "support/fake_memcached"

# A hostile review of the :memcached store, command by command: every reply
# the store reads split at every byte, every request left unanswered, and
# every error or wrong status word at each step. What must hold: a take is
# granted only when the server holds the taker's token; an error is an
# error (never "nobody holds it", never a grant); every call ends within
# its deadline; the next call works.
RSpec.describe "memcached store review: each command under faults" do
  let(:fake) { FakeMemcached.new.start }
  let(:key) { key_for("x") }
  after { fake.stop }

  def client(io_ms: 2000)
    @clients ||= []
    (@clients << MegaMutex::Native::Client.new([["127.0.0.1", fake.port]], 500, io_ms, 0)).last
  end

  after { @clients&.each(&:close) }

  # Every command the store sends (mg: the fake answers ERROR, as a
  # memcached without meta commands would; describe then reads with gets).
  COMMANDS = %w[add gets cas delete incr ma mg].freeze

  # The fence's commands as memcached runs them: "incr <fence> 1" (the new
  # value, or NOT_FOUND) and "ma <fence> N0 J<initial>" (HD). Returns the
  # reply, the effect applied.
  def fence_reply(cmd)
    value = fake.value(cmd.key)
    if cmd.name == "ma"
      fake.put(cmd.key, cmd.words.find { |w| w.start_with?("J") }[1..]) if value.nil?
      return "HD\r\n"
    end
    return "NOT_FOUND\r\n" if value.nil?

    fake.put(cmd.key, (value.to_i + 1).to_s)
    "#{value.to_i + 1}\r\n"
  end

  # Scripts the fence's commands (before any fault script: the newest wins).
  def emulate_fence
    %w[incr ma].each { |name| fake.on(name) { |cmd| cmd.reply(fence_reply(cmd)) } }
  end

  before { emulate_fence }

  def take(client, token, state = Object.new)
    [client._acquire(state, key, token, 5, 0, 0.01, 0.01), state]
  end

  describe "every reply trickled one byte at a time" do
    before do
      COMMANDS.each do |name|
        fake.on(name) do |cmd|
          cmd.trickle(%w[incr ma].include?(name) ? fence_reply(cmd) : cmd.default_reply, every: 0.001)
        end
      end
    end

    it "take, describe, extend, release (both paths), read and force_release read each reply whole" do
      c = client
      taken, state = take(c, "tok-a")
      expect(taken).to be(true)
      expect(state.instance_variable_get(:@fencing_token)).to be > 0 # the fence seeded (ma), then incremented
      expect(fake.value(key)).to eq("tok-a")
      expect(c._describe(key).first).to eq("tok-a")
      expect(c._read(key)).to eq("tok-a")
      expect(c._release(key, "tok-a", state.instance_variable_get(:@version))).to be(true) # one cas
      expect(fake.value(key)).to be_nil
      taken, state = take(c, "tok-b")
      expect(taken).to be(true)
      expect(c._extend(key, "tok-b", 5)).to be(true)
      expect(c._release(key, "tok-b", state.instance_variable_get(:@version))).to be(true) # gets, cas
      fake.put(key, "tok-c")
      expect(take(c, "tok-d").first).to be(false)
      expect(c._force_release(key)).to be(true)
      expect(c._read(key)).to be_nil
    end

    it "the confirmed take (the read-back found nothing: add with a reply, then gets)" do
      fake.on("gets", times: 1) { |cmd| cmd.trickle("END\r\n", every: 0.001) } # released in between
      c = client
      taken, = take(c, "tok-a")
      expect(taken).to be(true)
      expect(fake.count("add")).to eq(2)
      expect(fake.value(key)).to eq("tok-a")
    end
  end

  describe "a request left unanswered ends with ConnectionError within io_timeout" do
    COMMANDS.each do |name|
      it "#{name}: every call that sends it; a take's outcome is then unknown (its add was written)" do
        fake.on(name) { |cmd| cmd.stall }
        c = client(io_ms: 300)
        take_state = Object.new
        calls = {
          take: -> { c._acquire(take_state, key_for("free"), "tok-a", 5, 0, 0.01, 0.01) },
          extend: -> { c._extend(key, "tok-a", 5) },
          release: -> { c._release(key, "tok-a", nil) },
          read: -> { c._read(key) },
          describe: -> { c._describe(key) },
          force_release: -> { c._force_release(key) }
        }
        fake.put(key, "tok-a")
        timed_out = calls.select do |_what, call|
          thread = Thread.new do
            call.call
          rescue MegaMutex::ConnectionError => e
            e
          end
          # Far below the stall (until the fake stops), far above io_timeout.
          wait_for(within: 10, message: "the call to end") { !thread.alive? }
          thread.value.is_a?(MegaMutex::ConnectionError) && thread.value.message.include?("timed out")
        end.keys
        expect(timed_out).not_to be_empty # at least one of them sends `name`
        expect(take_state.instance_variable_get(:@outcome_unknown)).to be(true) if timed_out.include?(:take)
      end
    end
  end

  describe "a waiter's probe (gets alone, after two attempts found the same holder)" do
    it "never grants: a probe that reads the waiter's own token goes on with a full take, which finds the holder" do
      fake.put(key, "other")
      lied = false
      # A probe's gets follows a gets; a take's follows its incr.
      fake.on("gets", if: ->(_) { !lied && fake.commands[-2] == "gets" }) do |cmd|
        lied = true # one probe read back as the waiter's own token
        v = "tok-a"
        cmd.reply("VALUE #{cmd.key} 0 #{v.bytesize} 999\r\n#{v}\r\nEND\r\n")
      end
      c = client
      state = Object.new
      expect(c._acquire(state, key, "tok-a", 5, 0.5, 0.01, 0.02)).to be(false)
      expect(lied).to be(true)
      expect(fake.count("gets")).to be > fake.count("add") # probes happened
      expect(fake.value(key)).to eq("other")
    end
  end

  describe "a value at the size limits" do
    it "1 MiB is drained and read as a holder that no token equals: no grant, and the next call is in step" do
      big = "tok-a" + ("x" * ((1 << 20) - 5))
      fake.put(key, big)
      c = client
      expect(c._read(key)).to end_with(" ...")
      expect(take(c, "tok-a").first).to be(false)
      expect(c._extend(key, "tok-a", 5)).to be(false)
      expect(c._release(key, "tok-a", nil)).to be(false)
      expect(fake.value(key)).to eq(big)
    end

    it "more than 1 MiB announced is a ServerError before a byte of it is read, and the next call is in step" do
      fake.on("gets", times: 1) { |cmd| cmd.reply("VALUE #{cmd.key} 0 #{(1 << 20) + 1} 1\r\n") }
      c = client
      expect { c._read(key) }.to raise_error(MegaMutex::ServerError, /malformed reply/)
      fake.put(key, "tok-z")
      expect(c._read(key)).to eq("tok-z")
    end
  end

  it "a listener whose backlog is full (the connect never completes) ends with ConnectionError after connect_timeout" do
    listener = Socket.new(:INET, :STREAM)
    listener.bind(Addrinfo.tcp("127.0.0.1", 0))
    listener.listen(0) # never accepted
    port = listener.local_address.ip_port
    fillers = Array.new(4) do
      s = Socket.new(:INET, :STREAM)
      begin
        s.connect_nonblock(Addrinfo.tcp("127.0.0.1", port))
      rescue IO::WaitWritable
        nil
      end
      s
    end
    c = MegaMutex::Native::Client.new([["127.0.0.1", port]], 300, 300, 0)
    thread = Thread.new do
      c._acquire(Object.new, key, "tok-a", 5, 0, 0.01, 0.01)
    rescue MegaMutex::ConnectionError => e
      e
    end
    wait_for(within: 10, message: "the take to end") { !thread.alive? }
    expect(thread.value.message).to match(/could not connect: timed out .*connect_timeout/)
  ensure
    c&.close
    fillers&.each(&:close)
    listener&.close
  end

  describe "an error or a wrong status word at each step" do
    # The calls, each on a key of its own in a known state; `arm` scripts
    # the fault just before the call's own requests.
    def calls(c, arm)
      {
        "take (free)" => ->(k) { arm.call; take_key(c, k, "tok-a") },
        "take (held)" => ->(k) { fake.put(k, "other"); arm.call; take_key(c, k, "tok-a") },
        "release (one cas)" => lambda do |k|
          _, state = take_key(c, k, "tok-a")
          arm.call
          c._release(k, "tok-a", state.instance_variable_get(:@version))
        end,
        "release (gets, cas)" => ->(k) { fake.put(k, "tok-a"); arm.call; c._release(k, "tok-a", nil) },
        "extend" => ->(k) { fake.put(k, "tok-a"); arm.call; c._extend(k, "tok-a", 5) },
        "describe" => ->(k) { fake.put(k, "tok-a"); arm.call; c._describe(k) },
        "read" => ->(k) { fake.put(k, "tok-a"); arm.call; c._read(k) },
        "force_release" => ->(k) { fake.put(k, "tok-a"); arm.call; c._force_release(k) }
      }
    end

    def take_key(client, k, token)
      state = Object.new
      [client._acquire(state, k, token, 5, 0, 0.01, 0.01), state]
    end

    replies = ["SERVER_ERROR out of memory storing object", "CLIENT_ERROR bad data chunk", "NOT_STORED", "EXISTS",
               "NOT_FOUND", "STORED", "END", "ERROR", "VALUE", "0"]
    COMMANDS.each do |name|
      it "#{name}: answered with each of #{replies.size} lines (applied or not), a take is granted only with " \
         "the taker's token on the server, an error is a MegaMutex::Error, and the next call is in step" do
        c = client
        n = 0
        replies.product([true, false]).each do |line, applied|
          arm = lambda do
            fake.reset
            emulate_fence
            fake.on(name, times: 1) do |cmd|
              fence_reply(cmd) if applied && %w[incr ma].include?(name)
              cmd.apply if applied && !%w[incr ma].include?(name)
              cmd.reply("#{line}\r\n")
            end
          end
          calls(c, arm).each do |what, call|
            k = key_for("x#{n += 1}")
            result = begin
              call.call(k)
            rescue MegaMutex::Error => e
              e
            end
            fake.reset
            emulate_fence
            if what.start_with?("take") && result.is_a?(Array) && result.first == true
              expect(fake.value(k)).to eq("tok-a"), "#{what}, #{name} answered #{line.inspect}: granted, the server holds #{fake.value(k).inspect}"
            end
            if what == "extend" && result == true
              expect(fake.value(k)).to eq("tok-a"), "extend, #{name} answered #{line.inspect}: extended a lock not ours"
            end
            fake.put(k, "tok-z")
            expect(c._read(k)).to eq("tok-z"), "#{what}, #{name} answered #{line.inspect}: the next call out of step"
          end
        end
      end
    end
  end
end
