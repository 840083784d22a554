# frozen_string_literal: true

# Several memcached servers configured together: each id's lock lives on one
# server, chosen by consistent hashing; a server that is down makes its ids
# fail with ConnectionError instead of moving them to another server (which
# would let two processes hold the same lock).
RSpec.describe "MegaMutex over several memcached servers" do
  include MegaMutex

  let(:servers) { Array.new(3) { MemcachedServer.new.start } }
  let(:ids) { Array.new(50) { |i| "spread-#{i}" } }

  before { connect }

  # (Re)configures MegaMutex for `servers`, with fresh connections.
  def connect(list = servers)
    addresses = list.map(&:address)
    MegaMutex.configure { |c| c.memcache_servers = addresses }
  end

  after do
    MegaMutex.reset_configuration! # drop the connections before the servers go
    servers.each(&:stop)
  end

  # @return [Array<Integer>] indexes of the servers that hold a key for `id`
  def servers_holding(id)
    key = key_for(id)
    servers.each_index.select { |i| servers[i].running? && !servers[i].get(key).nil? }
  end

  # Takes every id's lock, records which server holds it, and releases it.
  # @return [Hash{String => Integer}] id => index of its server
  def placement
    ids.to_h do |id|
      lock = MegaMutex::Lock.new(id, timeout: 5)
      lock.lock
      begin
        [id, servers_holding(id)]
      ensure
        lock.unlock
      end
    end.transform_values do |where|
      raise "expected one server to hold the lock, found #{where.inspect}" unless where.size == 1

      where.first
    end
  end

  it "keeps each held lock on exactly one server, the holder's token as its value, spread over all the servers" do
    locks = ids.map { |id| MegaMutex::Lock.new(id, timeout: 5) }
    locks.each(&:lock)

    where = ids.to_h do |id|
      values = servers.map { |s| s.get(key_for(id)) }
      expect(values.compact).to eq([MegaMutex.get_current_lock(id)]), "#{id}: #{values.inspect}"
      [id, values.index { |v| !v.nil? }]
    end
    expect(where.values.uniq.sort).to eq([0, 1, 2])

    expect(locks.map(&:unlock)).to all(be(true))
    ids.each { |id| expect(servers.map { |s| s.get(key_for(id)) }).to all(be_nil) }
  end

  it "maps each id to the same server whatever the order the servers are listed in, in this process and another" do
    original = placement
    expect(original.values.uniq.size).to eq(3)

    connect(servers.reverse)
    expect(placement).to eq(original)

    # Another process, configured with the servers in yet another order,
    # cannot take any of the locks this one holds.
    locks = ids.map { |id| MegaMutex::Lock.new(id, timeout: 5).tap(&:lock) }
    order = servers.values_at(1, 2, 0).map(&:address).join(",")
    out, err, status = run_ruby(<<~RUBY, env: { "MEMCACHE_SERVERS" => order })
      MegaMutex.configure { |c| c.memcache_servers = ENV["MEMCACHE_SERVERS"] }
      taken = #{ids.inspect}.select { |id| MegaMutex::Lock.new(id).try_lock }
      puts "taken=\#{taken.join(',')}"
    RUBY
    expect(status).to be_success, "#{out}\n#{err}"
    expect(out).to eq("taken=\n")
  ensure
    locks&.each(&:unlock)
  end

  it "raises ConnectionError for the ids of a stopped server, never moving them to a live one" do
    where = placement
    dead = 1
    dead_ids = ids.select { |id| where[id] == dead }
    live_ids = ids - dead_ids
    expect(dead_ids).not_to be_empty
    expect(live_ids).not_to be_empty
    dead_port = servers[dead].port

    servers[dead].stop
    # A process that connects while the server is down (connections already
    # open when it goes have an example of their own).
    connect
    ran = []
    # Interleaved, so every live id is tried just after a failure on the dead server.
    dead_ids.zip(live_ids.each_slice((live_ids.size.to_f / dead_ids.size).ceil).to_a).each do |dead_id, some_live|
      expect { with_distributed_mutex(dead_id, timeout: 2) { ran << dead_id } }
        .to raise_error(MegaMutex::ConnectionError, /#{dead_port}/)
      expect { MegaMutex::Lock.new(dead_id, timeout: 2).try_lock }.to raise_error(MegaMutex::ConnectionError)
      expect { MegaMutex.get_current_lock(dead_id) }.to raise_error(MegaMutex::ConnectionError)

      Array(some_live).each do |live_id|
        seen = with_distributed_mutex(live_id, timeout: 2) do
          [MegaMutex.get_current_lock(live_id), servers[where[live_id]].get(key_for(live_id))]
        end
        expect(seen.first).not_to be_nil
        expect(seen).to eq([seen.first, seen.first])
      end
    end

    expect(ran).to eq([])
    # No lock (nor anything else) was written for the dead ids elsewhere.
    dead_ids.each { |id| expect(servers_holding(id)).to eq([]), "#{id} found on #{servers_holding(id).inspect}" }
  end

  it "keeps refusing the ids of a stopped server for as long as it is down, never ejecting it (10 s)" do
    where = placement
    dead = 1
    dead_id = ids.find { |id| where[id] == dead }
    live_id = ids.find { |id| where[id] != dead }

    servers[dead].stop
    connect
    # With failed servers ejected, libmemcached would rehash the dead
    # server's ids onto the live ones after a few retry periods (about 8 s
    # here): the lock would then be granted by a second server.
    outcomes = Hash.new(0)
    ran = 0
    deadline = monotonic + 10
    while monotonic < deadline
      begin
        with_distributed_mutex(dead_id, timeout: 0) { ran += 1 }
        outcomes[:locked] += 1
      rescue MegaMutex::ConnectionError
        outcomes[:connection_error] += 1
      end
      sleep 0.05
    end

    expect(ran).to eq(0)
    expect(outcomes.keys).to eq([:connection_error])
    expect(servers_holding(dead_id)).to eq([])
    expect(with_distributed_mutex(live_id, timeout: 2) { servers_holding(live_id) }).to eq([where[live_id]])
  end

  it "raises ConnectionError, not ServerError, on the first attempt over a connection its server closed by dying" do
    where = placement # leaves a pooled connection open to every server
    dead = 0
    dead_id = ids.find { |id| where[id] == dead }
    ran = false

    servers[dead].stop
    expect { with_distributed_mutex(dead_id, timeout: 2) { ran = true } }
      .to raise_error(MegaMutex::ConnectionError, /#{servers[dead].port}/)
    expect(ran).to be(false)
  end

  it "gives the ids of a restarted server back to it, once libmemcached retries it" do
    where = placement
    dead = 2
    dead_id = ids.find { |id| where[id] == dead }

    servers[dead].stop
    connect
    expect { with_distributed_mutex(dead_id, timeout: 2) { :ran } }.to raise_error(MegaMutex::ConnectionError)
    servers[dead].start # same port, empty

    seen = wait_for(within: 10, message: "#{dead_id} to be lockable again") do
      with_distributed_mutex(dead_id, timeout: 2) { servers_holding(dead_id) }
    rescue MegaMutex::ConnectionError
      nil
    end
    expect(seen).to eq([dead])
  end
end
